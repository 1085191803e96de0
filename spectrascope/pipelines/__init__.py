"""Pipelines: one function per command that composes the layers below it -- model specs
are built (``zoo``), images resolved (``io.sources``), the output folder checked and staged
(``io.results``), the analysis run on the engine (``analysis``), the report written
(``report``) -- inside the distributed session of ``torchrun`` when there is one. The
command line (``cli``) and the figure recipes are thin wrappers over these functions."""
