// Why ggml's AMX int8 kernels (whisper.cpp v1.8.5, ggml/src/ggml-cpu/amx/mmq.cpp) die with
// SIGILL/ILL_ILLOPN at their first `tileloadd` when built by GCC 12.2 (Debian bookworm).
//
// Hypothesis under test: GCC 12.2's <amxtileintrin.h> declares ldtilecfg's memory operand as one
// pointer (8 bytes): `asm volatile("ldtilecfg %X0" :: "m"(*(const void **)cfg))`. From -O1 up the
// compiler therefore treats the stores of rows[]/colsb[] (bytes 16..55) as dead and drops them:
// ldtilecfg loads palette 1 with every tile at rows = 0, colsb = 0. LDTILECFG accepts that (unused
// tiles must be zero), and the first TILELOADD into such a tile raises #UD (tdest not configured),
// which Linux delivers as SIGILL with si_code ILL_ILLOPN.
//
// The program runs ggml's own config routine (copied verbatim), then a ggml-shaped q8_0 tile loop,
// and does the same with the config loaded through an asm operand that covers all 64 bytes.
// With AMX it reads the loaded config back (sttilecfg) and catches the SIGILL. Without AMX (any
// other x86-64 CPU) ldtilecfg itself faults, and the handler decodes the instruction's memory
// operand and prints the 64 bytes the compiler handed to it: that shows whether a build is affected
// without running a single tile instruction. Exit status:
//   0  confirmed on AMX hardware: ggml's routine left the tiles unconfigured and tileloadd faulted
//      with ILL_ILLOPN, while the full-operand config computed the exact int32 result
//   10 no AMX here, but this build is affected: ggml's routine hands ldtilecfg no tile shapes,
//      the full-operand routine hands it ggml's shapes (run it on an AMX host to see the SIGILL)
//   3  this build is not affected (e.g. clang, or a GCC whose header uses __builtin_ia32_ldtilecfg)
//   1  not explained by the hypothesis (see the printed lines)
// Build and run: see README.md beside this file.
#include <immintrin.h>

#include <cpuid.h>
#include <csetjmp>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

// ---- verbatim from ggml/src/ggml-cpu/amx/common.h and mmq.cpp (v1.8.5, lines 160-225) ----------
#define TILE_M 16
#define TILE_N 16
#define TILE_K 32
#define VNNI_BLK 4
#define TMM0 0
#define TMM2 2
#define TMM4 4

struct tile_config_t{
    uint8_t palette_id = 0;
    uint8_t start_row = 0;
    uint8_t reserved_0[14] = {0};
    uint16_t colsb[16] = {0};
    uint8_t rows[16] = {0};
};

// ggml's `inline void ggml_tile_config_init(void)`; noinline only so that objdump can show it.
// Inlined into ggml_backend_amx_mul_mat, GCC 12.2 -O3 emits the same code: a 64-byte zero store,
// the palette byte, ldtilecfg (see README.md).
extern "C" __attribute__((noinline)) void ggml_tile_config_init(void) {
    static thread_local bool done = false;

    if (done) {
        return;
    }

    alignas(64) tile_config_t tc = {};
    tc.palette_id = 1;
    tc.start_row = 0;
    tc.rows[0] = 8;   tc.colsb[0] = 64;
    tc.rows[1] = 8;   tc.colsb[1] = 64;
    tc.rows[2] = 16;  tc.colsb[2] = 32;
    tc.rows[3] = 16;  tc.colsb[3] = 32;
    tc.rows[4] = 16;  tc.colsb[4] = 64;
    tc.rows[5] = 16;  tc.colsb[5] = 64;
    tc.rows[6] = 16;  tc.colsb[6] = 64;
    tc.rows[7] = 16;  tc.colsb[7] = 64;

    _tile_loadconfig(&tc);
    done = true;
}
// ---- end of verbatim part -----------------------------------------------------------------------

// The same config, loaded through an asm operand of the whole struct: the compiler must store all
// 64 bytes before the instruction. This is the fix (or: __builtin_ia32_ldtilecfg in newer GCC).
extern "C" __attribute__((noinline)) void tile_config_init_full_operand(void) {
    alignas(64) tile_config_t tc = {};
    tc.palette_id = 1;
    tc.rows[0] = 8;   tc.colsb[0] = 64;
    tc.rows[1] = 8;   tc.colsb[1] = 64;
    tc.rows[2] = 16;  tc.colsb[2] = 32;
    tc.rows[3] = 16;  tc.colsb[3] = 32;
    for (int t = 4; t < 8; ++t) { tc.rows[t] = 16; tc.colsb[t] = 64; }
    asm volatile("ldtilecfg %0" :: "m"(tc));
}

static void read_tile_config(tile_config_t * out) {
    asm volatile("sttilecfg %0" : "=m"(*out));  // whole-struct output operand, for the same reason
}

// q8_0 as ggml has it: fp16 scale + 32 int8; A rows are KB such blocks, so the tile stride is
// KB * 34 bytes, as in tinygemm_kernel_amx (`_tile_loadd(TMM2, A[i].qs, lda)`, lda = KB*sizeof).
struct block_q8_0 { uint16_t d; int8_t qs[32]; };
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 layout");

static sigjmp_buf on_sigill;
static volatile sig_atomic_t sigill_code;
static void * volatile sigill_addr;
static tile_config_t seen_by_ldtilecfg;           // set when the faulting instruction is ldtilecfg
static volatile sig_atomic_t ldtilecfg_faulted;

// Address of the memory operand of `ldtilecfg m512` (VEX.128.NP.0F38.W0 49 /0) at rip.
static const unsigned char * ldtilecfg_operand(const unsigned char * p, const greg_t * g) {
    if (p[0] != 0xc4 || (p[1] & 0x1f) != 2 || (p[2] & 0x03) != 0 || p[3] != 0x49) return nullptr;
    static const int reg[16] = {REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI,
                                REG_R8,  REG_R9,  REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15};
    const int x = !(p[1] & 0x40), b = !(p[1] & 0x20);
    const int mod = p[4] >> 6, rm = p[4] & 7;
    if (mod == 3 || ((p[4] >> 3) & 7) != 0) return nullptr;
    const unsigned char * q = p + 5;
    intptr_t addr = 0;
    if (rm == 4) {                                 // SIB byte
        const int sib = *q++, idx = ((sib >> 3) & 7) | (x << 3), base = (sib & 7) | (b << 3);
        if (idx != 4) addr += (intptr_t) g[reg[idx]] << (sib >> 6);
        if (mod == 0 && (base & 7) == 5) { int32_t d; memcpy(&d, q, 4); return (const unsigned char *) (addr + d); }
        addr += (intptr_t) g[reg[base]];
    } else if (mod == 0 && rm == 5) {              // rip-relative
        int32_t d; memcpy(&d, q, 4);
        return (const unsigned char *) ((intptr_t) p + 9 + d);
    } else {
        addr += (intptr_t) g[reg[rm | (b << 3)]];
    }
    if (mod == 1) addr += (int8_t) *q;
    if (mod == 2) { int32_t d; memcpy(&d, q, 4); addr += d; }
    return (const unsigned char *) addr;
}

static void sigill_handler(int, siginfo_t * si, void * uc_) {
    sigill_code = si->si_code;
    sigill_addr = si->si_addr;
    const greg_t * g = ((ucontext_t *) uc_)->uc_mcontext.gregs;
    // The operand may sit in the red zone below rsp; the kernel leaves those 128 bytes alone.
    if (const unsigned char * op = ldtilecfg_operand((const unsigned char *) g[REG_RIP], g)) {
        memcpy(&seen_by_ldtilecfg, op, sizeof seen_by_ldtilecfg);
        ldtilecfg_faulted = 1;
    }
    siglongjmp(on_sigill, 1);
}

// C[16x16] = sum over KB blocks of A_i[16x32] . B_i[32x16], with ggml's tiles: B in TMM0 (8 rows x
// 64 bytes, VNNI), A in TMM2 (16 x 32), C in TMM4 (16 x 64), as in mmq.cpp:2116-2151.
static void amx_q8_0_tiles(const block_q8_0 * A, int KB, const int8_t * B_vnni, int32_t * C) {
    alignas(64) int32_t tile_c[TILE_M * TILE_N];
    const int lda = KB * (int) sizeof(block_q8_0);
    memset(C, 0, sizeof(int32_t) * TILE_M * TILE_N);
    for (int i = 0; i < KB; ++i) {
        _tile_zero(TMM4);
        _tile_loadd(TMM0, B_vnni + i * TILE_N * TILE_K, TILE_N * VNNI_BLK);
        _tile_loadd(TMM2, A[i].qs, lda);
        _tile_dpbssd(TMM4, TMM2, TMM0);
        _tile_stored(TMM4, tile_c, TILE_N * sizeof(int32_t));
        for (int j = 0; j < TILE_M * TILE_N; ++j) C[j] += tile_c[j];
    }
}

static void print_config(const char * label, const tile_config_t & tc, const char * how) {
    printf("%s: config %s: palette=%u start_row=%u rows[0..7]=", label, how, tc.palette_id, tc.start_row);
    for (int t = 0; t < 8; ++t) printf("%u%c", tc.rows[t], t < 7 ? ',' : ' ');
    printf("colsb[0..7]=");
    for (int t = 0; t < 8; ++t) printf("%u%c", tc.colsb[t], t < 7 ? ',' : '\n');
}

static bool config_as_ggml_wants(const tile_config_t & tc) {
    static const uint8_t rows[8] = {8, 8, 16, 16, 16, 16, 16, 16};
    static const uint16_t colsb[8] = {64, 64, 32, 32, 64, 64, 64, 64};
    return tc.palette_id == 1 && memcmp(tc.rows, rows, 8) == 0 && memcmp(tc.colsb, colsb, 16) == 0;
}

enum Outcome { RAN_OK, RAN_WRONG, FAULTED };

// With AMX: load the config, read it back, run the tile loop. Without AMX: only the config routine
// runs, up to its ldtilecfg, whose operand the SIGILL handler captures into *config.
static Outcome run(const char * label, void (*load_config)(void), const block_q8_0 * A, int KB,
                   const int8_t * B_vnni, const int32_t * want, tile_config_t * config) {
    int32_t C[TILE_M * TILE_N];
    ldtilecfg_faulted = 0;
    if (sigsetjmp(on_sigill, 1)) {
        const unsigned char * p = (const unsigned char *) sigill_addr;
        if (ldtilecfg_faulted) {
            *config = seen_by_ldtilecfg;
            print_config(label, *config, "handed to ldtilecfg, which faulted");
            return FAULTED;
        }
        printf("%s: SIGILL si_code=%d (%s) at %p, bytes %02x %02x %02x %02x%s\n", label, (int) sigill_code,
               sigill_code == ILL_ILLOPN ? "ILL_ILLOPN = #UD" : "not ILL_ILLOPN", sigill_addr, p[0], p[1], p[2],
               p[3], (p[0] == 0xc4 && (p[1] & 0x1f) == 2 && (p[2] & 3) == 3 && p[3] == 0x4b) ? " = tileloadd" : "");
        return FAULTED;
    }
    load_config();
    read_tile_config(config);
    print_config(label, *config, "loaded (sttilecfg)");
    amx_q8_0_tiles(A, KB, B_vnni, C);
    const bool same = memcmp(C, want, sizeof C) == 0;
    printf("%s: tile loop finished, result %s the scalar reference\n", label, same ? "equals" : "DIFFERS from");
    return same ? RAN_OK : RAN_WRONG;
}

static bool cpu_has_amx_int8(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(d & (1u << 24)) || !(d & (1u << 25))) return false;  // AMX-TILE, AMX-INT8
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
    unsigned lo, hi;
    asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & (3u << 17)) == (3u << 17);  // XTILECFG + XTILEDATA enabled by the OS
}

int main(int argc, char ** argv) {
    // K = Whisper's n_state (tiny.en 384, base 512) or MLP width (1536, 2048); multiple of 32.
    const int K = argc > 1 ? atoi(argv[1]) : 384;
    if (K <= 0 || K % TILE_K) { fprintf(stderr, "K must be a positive multiple of 32\n"); return 2; }
    const int KB = K / TILE_K;
    const bool have_amx = cpu_has_amx_int8();
    // what ggml_amx_init() does (amx.cpp:214-226): ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    if (have_amx && syscall(SYS_arch_prctl, 0x1023, 18) != 0) {
        perror("arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)");
        return 1;
    }
    printf("AMX-TILE/AMX-INT8 usable here: %s\n", have_amx ? "yes" : "no (only the ldtilecfg operands are inspected)");

    block_q8_0 * A = (block_q8_0 *) calloc((size_t) TILE_M * KB, sizeof(block_q8_0));
    int8_t * B = (int8_t *) aligned_alloc(64, (size_t) KB * TILE_N * TILE_K);     // VNNI-packed
    int32_t want[TILE_M * TILE_N] = {0};
    if (!A || !B) return 2;
    uint32_t seed = 12345;
    auto next = [&seed] { seed = seed * 1664525u + 1013904223u; return (int8_t) ((int) ((seed >> 24) % 255) - 127); };
    for (int m = 0; m < TILE_M; ++m)
        for (int k = 0; k < K; ++k) A[m * KB + k / 32].qs[k % 32] = next();
    for (int i = 0; i < KB; ++i)        // B_i[k][n] stored as [k/4][n][k%4], ggml's packed layout
        for (int k = 0; k < TILE_K; ++k)
            for (int n = 0; n < TILE_N; ++n)
                B[i * TILE_N * TILE_K + (k / 4) * TILE_N * 4 + n * 4 + k % 4] = next();
    for (int m = 0; m < TILE_M; ++m)
        for (int n = 0; n < TILE_N; ++n)
            for (int k = 0; k < K; ++k)
                want[m * TILE_N + n] += A[m * KB + k / 32].qs[k % 32] *
                    B[(k / 32) * TILE_N * TILE_K + ((k % 32) / 4) * TILE_N * 4 + n * 4 + k % 4];

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = sigill_handler;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGILL, &sa, nullptr);

    printf("K=%d (KB=%d), A stride %d bytes\n", K, KB, KB * (int) sizeof(block_q8_0));
    tile_config_t ggml_cfg, full_cfg;
    const Outcome ggml = run("ggml_tile_config_init", ggml_tile_config_init, A, KB, B, want, &ggml_cfg);
    const int ggml_sigill_code = sigill_code;
    const Outcome full = run("full-operand ldtilecfg", tile_config_init_full_operand, A, KB, B, want, &full_cfg);
    const bool ggml_ok = config_as_ggml_wants(ggml_cfg), full_ok = config_as_ggml_wants(full_cfg);

    if (!have_amx) {
        if (!ggml_ok && full_ok) {
            printf("AFFECTED BUILD: ggml's routine hands ldtilecfg no tile shapes; on AMX, tileloadd will #UD\n");
            return 10;
        }
        if (ggml_ok && full_ok) {
            printf("NOT AFFECTED: this build hands ldtilecfg ggml's full config\n");
            return 3;
        }
    } else {
        if (ggml == FAULTED && !ggml_ok && ggml_sigill_code == ILL_ILLOPN && full == RAN_OK && full_ok) {
            printf("CONFIRMED: ggml's config routine loaded no tile shapes; tileloadd #UD; full operand fixes it\n");
            return 0;
        }
        if (ggml == RAN_OK && ggml_ok && full == RAN_OK) {
            printf("NOT AFFECTED: this compiler kept ggml's config stores; ggml's routine works with this build\n");
            return 3;
        }
    }
    printf("NOT EXPLAINED by the hypothesis (ggml run %d, config ok %d; full-operand run %d, config ok %d)\n",
           (int) ggml, (int) ggml_ok, (int) full, (int) full_ok);
    return 1;
}
