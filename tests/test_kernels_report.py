"""bench/kernel_report.py's reading of ptxas and cuobjdump output, on made-up listings (the report
itself needs the CUDA wheels and runs outside the test suite)."""

from test_packaging import pins

from bench import kernel_report

# A kernel with a prologue, a loop of seven instructions (0x0040-0x00a0) and the self-branch that
# ends every kernel; the dual-issue control words cuobjdump prints on the next line are omitted.
LISTING = """
\tcode for sm_90a
\t\tFunction : lstm_forward
        /*0000*/                   LDC R1, c[0x0][0x28] ;                 /* 0x00000a00ff017b82 */
        /*0010*/                   S2R R0, SR_TID.X ;                      /* 0x0000000000007919 */
        /*0020*/                   MOV R2, RZ ;                            /* 0x000000ff00027202 */
        /*0030*/                   MOV R3, RZ ;                            /* 0x000000ff00037202 */
        /*0040*/                   LDG.E.EL.128 R4, desc[UR4][R2.64] ;    /* 0x0000000402047981 */
        /*0050*/                   LDG.E.EF.128 R8, desc[UR4][R2.64+0x10] ; /* 0x0000001002087981 */
        /*0060*/                   HMMA.16816.F32.BF16 R12, R4, R8, R12 ; /* 0x000000080c0c723c */
        /*0070*/                   FADD R16, R12, R13 ;                    /* 0x0000000d0c107221 */
        /*0080*/              @!P0 STG.E desc[UR4][R2.64], R16 ;          /* 0x0000001002008986 */
        /*0090*/                   ISETP.GE.AND P0, PT, R0, 0x7f, PT ;    /* 0x0000007f0000780c */
        /*00a0*/              @!P0 BRA 0x40 ;                              /* 0xfffffff000008947 */
        /*00b0*/                   EXIT ;                                  /* 0x000000000000794d */
        /*00c0*/                   BRA 0xc0;                               /* 0xfffffffc00fc7947 */
"""


def test_the_recurrence_loop_is_the_backward_branch_with_the_longest_body():
  instructions = kernel_report.sass_instructions(LISTING)
  assert len(instructions) == 13 and instructions[0] == (0, "LDC R1, c[0x0][0x28]")
  loop = kernel_report.recurrence_loop(instructions)
  assert loop["total"] == 7 and loop["inner_loops"] == 0
  assert loop["counts"] == {"LDG": 2, "HMMA": 1, "FADD": 1, "STG": 1, "ISETP": 1, "BRA": 1}


def test_step_estimate_counts_bytes_and_multiply_adds_per_program():
  loop = kernel_report.recurrence_loop(kernel_report.sass_instructions(LISTING))
  estimate = kernel_report.estimate_step(loop, warps=8, arch="9.0", shared_bytes=0)
  threads = 8 * 32
  # The evict-last load fits in L1 (it stays there); the evict-first load and the 4-byte store go
  # to L2.
  assert estimate["l1_kib"] * 1024 == 16 * threads
  assert estimate["l2_kib"] * 1024 == (16 + 4) * threads
  chip = kernel_report.CHIPS["9.0"]
  assert abs(estimate["tensor_us"] * chip["ghz"] * 1000 - 16 * 8 * 16 * 8 / 1024) < 1e-9
  assert abs(estimate["issue_us"] * chip["ghz"] * 1000 - 7 * 8 / 4) < 1e-9
  assert estimate["bound"] == "l2" and estimate["us"] == estimate["l2_us"]
  # Without room in L1 beside the shared memory, the weights come from L2 at every step.
  full = kernel_report.estimate_step(loop, warps=8, arch="9.0",
                                     shared_bytes=chip["l1_shared_kib"] * 1024)
  assert full["l1_kib"] == 0 and full["l2_kib"] * 1024 == (16 + 16 + 4) * threads


def test_report_reads_the_pins_of_requirements_cuda():
  # The wheels it fetches are exactly the ones a GPU install gets.
  found = kernel_report.requirement_pins(kernel_report.REPO / "requirements-cuda.txt")
  assert found == pins("requirements-cuda.txt")
  assert {"jax-cuda12-plugin", "jax-cuda12-pjrt", "nvidia-cuda-nvcc-cu12"} <= set(found)
