"""Source trees: resumable verified downloads, safe extraction and tree hashes, the external sources of CMake-era
releases, and the release archive the fetch step obtains."""
