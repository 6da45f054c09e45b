from orthrus.cli import main

raise SystemExit(main())
