from hlbd.cli import main

main()
