# SPDX-License-Identifier: BSD-3-Clause
# scripts/benchlib.sh: sourced by scripts/bench.sh and every scripts/bench-*.sh.
#
# bench_summary FIGURE TABULA ANCHOR-NAME ANCHOR GOAL
#   adds one row to the summary table bench.sh prints at the end (when a
#   script runs alone, TB_BENCH_SUMMARY is unset and the row goes nowhere).
#   TABULA and ANCHOR are numbers with their unit ("152000 IOPS", "3.5 s");
#   the ratio TABULA/ANCHOR is computed when both are numbers.
bench_summary()
{
  [ -n "${TB_BENCH_SUMMARY:-}" ] || return 0
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$TB_BENCH_SUMMARY"
}

# bench_summary_print FILE: the rows as a Markdown table with ratios.
bench_summary_print()
{
  awk -F'\t' '
    BEGIN {
      print "| figure | tabula | anchor | anchor value | tabula / anchor | goal |"
      print "|---|---:|---|---:|---:|---|"
    }
    {
      split($2, a, " "); split($4, b, " ")
      ratio = (a[1] + 0 > 0 && b[1] + 0 > 0) ? sprintf("%.2f", a[1] / b[1]) : "-"
      printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, ratio, $5
    }' "$1"
}
