"""x86-64 boot state: segments and GDT, CPUID, MSRs, boot tables."""
