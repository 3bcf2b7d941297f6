"""Reports of scenario runs: console summary, JSON (DESIGN.md section 3) and JUnit XML."""
