from robustgan.cli import main

main()
