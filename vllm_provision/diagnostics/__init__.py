"""What runs before the work: `./inv doctor` (is this host ready), the build's preflight, and bad input refused at
plan time. Each draws from the checks layer, never from each other."""
