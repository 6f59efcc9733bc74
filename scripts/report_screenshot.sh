#!/usr/bin/env bash
# Regenerate docs/img/report.png: run the demo, then screenshot the top of its report
# with headless Chromium (offline: the report embeds plotly's JavaScript).
#   bash scripts/report_screenshot.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-focuslens-out}"
[ -f "$run/report.html" ] || focuslens demo --out "$run" --quiet
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,1900 \
  --virtual-time-budget=20000 --screenshot="$PWD/docs/img/report.png" "file://$PWD/$run/report.html"
