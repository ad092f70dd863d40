"""Minimal scikit-learn estimator protocol, without depending on scikit-learn.

Promise: ``get_params``/``set_params`` read and write exactly the parameters of
``__init__`` (whose body must store them unchanged), so that
``sklearn.base.clone`` round-trips; ``check_is_fitted`` raises
:class:`NotFittedError` (a ValueError and AttributeError, like scikit-learn's)
until ``fit`` has set attributes ending in ``_``.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["BaseEstimator", "NotFittedError", "check_is_fitted"]


class NotFittedError(ValueError, AttributeError):
    """The estimator is used before ``fit``."""


class BaseEstimator:
    """get_params / set_params / repr from the ``__init__`` signature."""

    @classmethod
    def _get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(
            name
            for name, p in sig.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters of this estimator (and of nested estimators when ``deep``)."""
        out: dict[str, Any] = {}
        for name in self._get_param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                for key, sub in value.get_params().items():
                    out[f"{name}__{key}"] = sub
            out[name] = value
        return out

    def set_params(self, **params: Any) -> BaseEstimator:
        """Set parameters; unknown names raise ValueError listing the valid ones."""
        valid = self._get_param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, delim, sub = key.partition("__")
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for {type(self).__name__}; "
                    f"valid parameters are: {', '.join(valid)}"
                )
            if delim:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            getattr(self, name).set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        changed = []
        for name, p in sig.parameters.items():
            if name == "self":
                continue
            value = getattr(self, name, p.default)
            try:
                same = value is p.default or bool(value == p.default)
            except Exception:
                same = False
            if not same:
                text = repr(value)
                if len(text) > 60:
                    text = text[:57] + "..."
                changed.append(f"{name}={text}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_is_fitted__(self) -> bool:
        return any(k.endswith("_") and not k.startswith("_") for k in vars(self))


def check_is_fitted(estimator: BaseEstimator) -> None:
    """Raise :class:`NotFittedError` unless ``estimator`` has been fitted."""
    if not estimator.__sklearn_is_fitted__():
        raise NotFittedError(
            f"this {type(estimator).__name__} instance is not fitted yet; "
            "call 'fit' before using it"
        )
