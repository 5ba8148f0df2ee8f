"""Kept so ``python -m bot.demo_service`` (older compose files, scripts) still starts the sample
service; it lives in :mod:`bot.demo.service`."""

from bot.demo.service import main

if __name__ == "__main__":
    raise SystemExit(main())
