"""Check a dataset and preview it:  python -m segfw.data.inspect data=voc data.root=/data/VOC2012

The command's address; it lives in ``segfw.commands.inspect`` and the survey it runs in
``segfw.data.survey``.
"""

if __name__ == "__main__":
    from segfw.commands.inspect import main

    main()
