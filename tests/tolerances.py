"""The one table of tolerances. Every test takes its bounds from here; none is ever loosened to get green.

Units: energies in eV, forces in eV/Å. "f64" bounds are round-off of float64 arithmetic; "f32"
bounds sit just above the float32 noise floor measured upstream (9e-5 eV/Å, 1e-6 eV/atom).
"""

# float64 port vs upstream float64 PyTorch
PARITY_F64_ENERGY = 1e-9  # eV
PARITY_F64_FORCES = 1e-9  # eV/Å
# float32 port vs upstream float64
PARITY_F32_FORCES = 1e-4  # eV/Å
PARITY_F32_ENERGY_PER_ATOM = 1e-5  # eV/atom
# exact identities computed twice in float64 (padding, layouts, save/load round trips, invariances)
ROUNDOFF_F64 = 1e-10
# analytic backward vs autodiff, float64
ANALYTIC_VS_AUTODIFF_F64 = 1e-10
# analytic float32 vs float64 forces
ANALYTIC_F32_VS_F64_FORCES = 1e-5
# float32 host call of a structure translated far from the origin (up to 1e8 Å) vs at the origin:
# the float32 noise floor (float64 itself rounds coordinates of 1e8 Å to 1.5e-8 Å)
FLOAT32_TRANSLATION_FORCES = 1e-5  # eV/Å
FLOAT32_TRANSLATION_ENERGY_PER_ATOM = 1e-6  # eV/atom
# central finite differences of the energy vs forces, float64
FINITE_DIFFERENCE_FORCES = 1e-6
# parameter gradient of a force-matching loss, analytic vs autodiff, float64
PARAM_GRAD_F64 = 1e-8
# MD (userland): total-energy drift of NVE in float64 at 0.25 fs over 2,000 steps, eV/atom
MD_ENERGY_DRIFT_PER_ATOM = 1e-4
# the same run: largest |E(t) - E(0)| per atom, drift plus velocity Verlet's O(dt²) oscillation
# (measured 0.9e-4 to 2.0e-4 for ethanol at 300 K with student-427k, depending on the seed)
MD_ENERGY_MAX_DEVIATION_PER_ATOM = 5e-4
# compressed (tabulated) radial filters at the default spacing vs the exact model, float64
COMPRESSED_FORCES = 1e-5  # eV/Å
COMPRESSED_ENERGY_PER_ATOM = 1e-6  # eV/atom
# dW/dd of a compressed filter table in float32 vs the float64 network, relative to max |dW/dd| over
# (0, rc): the float32 network itself sits at 6e-7 and the float64 table at 5e-7 (427K model)
COMPRESSED_F32_FILTER_SLOPE_REL = 5e-6
# stress (autodiff strain derivative) vs central finite differences of the energy, float64
FINITE_DIFFERENCE_STRESS = 1e-8  # eV/Å^3
# fused kernels vs their plain-JAX reference in float32 (same math, other summation order),
# relative to the largest magnitude of each compared array
KERNEL_VS_REFERENCE_F32 = 1e-5
# errors of the bundled model recomputed on the committed subset vs the numbers stored with it
# (float32 on a GPU vs float64 on a CPU changes a mean absolute error by ~1e-6 relative)
MODEL_CARD_METRICS_REL = 1e-3
# a stored teacher label vs a fresh tblite call at the same geometry: during MD the SCF starts from the
# previous step's wavefunction, so forces differ by the SCF convergence (~2e-5 eV/Å; energies ~1e-9 eV)
TEACHER_RELABEL_ENERGY = 1e-6  # eV
TEACHER_RELABEL_FORCES = 1e-4  # eV/Å
# a pair swept through the cutoff with the polynomial filter envelope, |E(rc - δ) - E(rc + δ)| at
# δ = 1e-7 Å (env ~ δ³ there), and the largest force-component jump (env' ~ δ²)
CUTOFF_CONTINUITY_ENERGY = 1e-8  # eV
CUTOFF_CONTINUITY_FORCES = 1e-8  # eV/Å
# MD: total-energy drift (block means) of NVE of a dense periodic box with the smooth architecture
# (filter envelope + channel mixing), float64, 0.25 fs, 2,000 steps, pairs crossing rc all the time
MD_SMOOTH_BOX_ENERGY_DRIFT_PER_ATOM = 1e-5  # eV/atom
# liquid-MD validation analysis (benchmarks/liquid_analysis.py) on synthetic inputs: the first peak
# of g(r) found within one bin (0.02 Å) of where it is; g(r) of uniformly random points averaged
# over 2-9.5 Å equals 1 up to its sampling noise (0.35 % for the test's 180k pairs) times ~6
RDF_FIRST_PEAK_POSITION = 0.02  # Å
RDF_IDEAL_GAS = 0.02
# least-squares NVE drift of a known linear drift under a velocity-Verlet-like oscillation of
# 0.5 meV/atom over 10 ps (measured error 9e-5), meV/atom/ps: 1 % of the 0.1 meV/atom/ps target
DRIFT_FIT = 1e-3
