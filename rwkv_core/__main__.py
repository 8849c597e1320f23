"""`python -m rwkv_core ...`: the command line of `rwkv_core.cli`."""
import sys

from rwkv_core.cli import main

sys.exit(main())
