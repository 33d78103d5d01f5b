"""A deliberately broken plugin: importing it fails, and syntk reports that without stopping."""

import syntk_package_that_does_not_exist  # noqa: F401  (the point of this example)
