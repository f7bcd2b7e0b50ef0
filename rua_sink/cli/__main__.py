"""``python -m rua_sink.cli``: the command line, as the ``rua-sink`` entry point runs it."""

from rua_sink.cli.main import main

raise SystemExit(main())
