from kuma_dp.cli import main

main()
