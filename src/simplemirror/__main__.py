from simplemirror.cli.main import main

raise SystemExit(main())
