"""The stage contract every stage uses: the stage registry, run folders and atomic builds, config, errors, CLI."""
