"""Lazily imported heavy modules. Importing OpenCV changes process environment variables (Qt and
library paths), so the library defers it until a function actually draws or resizes."""
from __future__ import annotations

import importlib


class LazyModule:
    def __init__(self, name: str):
        self.__dict__["_name"] = name
        self.__dict__["_module"] = None

    def __getattr__(self, attr):
        mod = self.__dict__["_module"]
        if mod is None:
            mod = importlib.import_module(self.__dict__["_name"])
            self.__dict__["_module"] = mod
        return getattr(mod, attr)


cv2 = LazyModule("cv2")
