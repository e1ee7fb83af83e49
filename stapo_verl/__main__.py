from stapo_verl.cli import run

raise SystemExit(run())
