from stapo_verl.cli import main

raise SystemExit(main())
