"""Analysis of runs: coordinate checks (coord_check), and the transfer report of a sweep: runs read and their
roles chosen (runs), optimum fits (fitting), shifts and transfer losses (transfer), the table (table) and
figures (figures), tied together by ``megadepth report`` (report)."""
