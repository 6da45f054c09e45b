"""``python -m orthrus.report {report,compare,gate,baseline} ...``"""

from orthrus.report.commands import main

raise SystemExit(main())
