"""The probe layer: facts about the host (GPUs, driver, CPUs, RAM, compilers) and about a Python env, each asked
once and reported as seen; the checks layer judges them."""
