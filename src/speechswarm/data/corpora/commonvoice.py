"""Mozilla Common Voice (commonvoice.mozilla.org), one language folder.

    speechswarm prepare commonvoice /data/cv-corpus-17.0/en --split train --out cv.jsonl

Layout: `<root>/<split>.tsv` (train, dev, test, validated, other, invalidated, ...), tab
separated with a header row; columns are found by name: `client_id`, `path`, `sentence`
are required, `age`, `gender`, `accents`, `locale` are copied to `extra` when present and
non-empty (newer releases add `sentence_id`, `variant`, ... which are ignored). Audio:
`<root>/clips/<path>`, MP3 in the release (libsndfile >= 1.1 reads MP3; see
`soundfile.available_formats()`), any readable format accepted. Quotes in sentences are
literal (read with QUOTE_NONE). Utterance id: the clip's file name without its suffix;
speaker: `client_id`; extra: `split` plus the optional columns above.
"""

from __future__ import annotations

import csv
import os

from speechswarm.data.corpora import (
    Candidate,
    ImportResult,
    build_result,
    require_dir,
    require_file,
)
from speechswarm.data.text import DEFAULT_ALPHABET
from speechswarm.errors import DataError

REQUIRED_COLUMNS = ("client_id", "path", "sentence")
OPTIONAL_COLUMNS = ("age", "gender", "accents", "locale")


def prepare_commonvoice(
    src: str | os.PathLike,
    split: str = "train",
    *,
    alphabet: str = DEFAULT_ALPHABET,
    digits: str = "spell",
    workers: int = 1,
) -> ImportResult:
    """Every row of `<src>/<split>.tsv` (file order)."""
    root = require_dir(src, "commonvoice", "a Common Voice language folder (*.tsv + clips/)")
    available = sorted(p.stem for p in root.glob("*.tsv"))
    tsv = require_file(
        root / f"{split}.tsv", "commonvoice", f"a split named in {available or 'no *.tsv files'}"
    )
    cands: list[Candidate] = []
    problems: list[tuple[str, str]] = []
    # Sentences hold literal quotes; a large csv field limit guards against odd rows.
    csv.field_size_limit(1 << 24)
    with open(tsv, encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in REQUIRED_COLUMNS if c not in (rows.fieldnames or [])]
        if missing:
            raise DataError(
                f"commonvoice: {tsv} lacks column(s) {missing} (header: {rows.fieldnames}); "
                "is this a Common Voice TSV?"
            )
        for lineno, row in enumerate(rows, 2):
            clip = (row["path"] or "").strip()
            if not clip:
                problems.append((f"{tsv}:{lineno}", "bad_line: empty path column"))
                continue
            extra = {"split": split}
            extra.update(
                {c: row[c].strip() for c in OPTIONAL_COLUMNS if (row.get(c) or "").strip()}
            )
            cands.append(
                Candidate(
                    id=os.path.splitext(os.path.basename(clip))[0],
                    audio=root / "clips" / clip,
                    raw_text=row["sentence"] or "",
                    speaker=(row["client_id"] or "").strip(),
                    extra=extra,
                )
            )
    return build_result(cands, problems, alphabet=alphabet, digits=digits, workers=workers)
