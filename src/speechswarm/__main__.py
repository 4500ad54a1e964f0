from speechswarm.cli import main

raise SystemExit(main())
