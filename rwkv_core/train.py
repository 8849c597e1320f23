"""`python -m rwkv_core.train ...`: train a demo model (the command of `rwkv_core.demo.train`)."""
from rwkv_core.demo.train import main

if __name__ == "__main__":
    main()
