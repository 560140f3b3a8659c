from graft_ui.cli import main

raise SystemExit(main())
