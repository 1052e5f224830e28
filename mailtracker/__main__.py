from mailtracker.cli import main

main()
