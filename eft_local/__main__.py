from eft_local.cli import main

raise SystemExit(main())
