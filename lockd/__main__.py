from lockd.cli import main

raise SystemExit(main())
