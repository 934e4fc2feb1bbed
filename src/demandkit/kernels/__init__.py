"""Pure tensor kernels: no pandas, no formulas, no printing, no host synchronisation inside."""
