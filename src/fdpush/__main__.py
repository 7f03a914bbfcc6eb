from fdpush.cli import main

main()
