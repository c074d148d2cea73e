"""The ``gem`` command line: a thin layer over the library API, one module per command group.

| module | commands |
|---|---|
| ``main`` | the ``gem`` group, ``gem info`` |
| ``embed`` | ``gem embed`` |
| ``train`` | ``gem train`` |
| ``evaluate`` | ``gem eval`` |
| ``adapters`` | ``gem merge``, ``gem stack``, ``gem swap``, ``gem inspect`` |
| ``export`` | ``gem export`` |
| ``serve`` | ``gem serve`` |
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]
