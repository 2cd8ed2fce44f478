from fedprune.cli import main

raise SystemExit(main())
