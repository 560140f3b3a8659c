from graft_ui.commands import main

raise SystemExit(main())
