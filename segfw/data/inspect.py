"""Check a dataset and preview it:  python -m segfw.data.inspect data=voc data.root=/data/VOC2012

The command's address; it lives in ``segfw.commands.inspect`` and the survey it runs in
``segfw.data.survey``.
"""

if __name__ == "__main__":
    import sys

    from segfw.commands.inspect import main
    from segfw.commands.overrides import exit_on_unknown_keys

    exit_on_unknown_keys("inspect", sys.argv[1:])
    main()
