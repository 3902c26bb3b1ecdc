from omnitrain.cli import main

raise SystemExit(main())
