from gradoctor.cli import main

main()
