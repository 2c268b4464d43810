from kuma_dp import starttrace

starttrace.mark("interpreter")  # the first line of ours that runs: the start-up timeline's origin

from kuma_dp.cli import main  # noqa: E402 - after the mark, so the timeline shows what importing costs

main()
