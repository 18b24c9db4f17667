"""The one Jinja environment that renders every generated file (C model, TFLM glue, Makefile,
CMakeLists.txt) from templates/."""

import functools

import jinja2
import numpy as np

from ..core.resources import templates_dir

def carray(values, per_line=16):
    v = [int(x) for x in np.asarray(values).ravel()] or [0]
    return "\n".join("    " + ", ".join(str(x) for x in v[i : i + per_line]) + "," for i in range(0, len(v), per_line))


@functools.lru_cache(maxsize=None)
def environment():
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["carray"] = carray
    env.filters["csize"] = lambda v: max(int(np.asarray(v).size), 1)
    return env


def render(template, **context):
    """templates/<template> rendered with context."""
    return environment().get_template(template).render(**context)
