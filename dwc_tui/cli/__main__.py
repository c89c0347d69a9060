from dwc_tui.cli import main

main()
