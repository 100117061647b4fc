from simplemirror.cli import main

raise SystemExit(main())
