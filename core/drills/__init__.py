"""`tally drill`: disaster-recovery drills on real, throwaway PostgreSQL clusters."""
