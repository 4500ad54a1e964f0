"""`python -m speechswarm.serve ARGS` = `speechswarm serve ARGS`."""

import argparse
import sys

from speechswarm.errors import run_command
from speechswarm.serve.cli import add_parser

parser = argparse.ArgumentParser(prog="speechswarm")
add_parser(parser.add_subparsers(dest="command"))
raise SystemExit(run_command(parser, ["serve", *sys.argv[1:]]))
