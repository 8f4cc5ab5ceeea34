package dashattn

import (
	"errors"
	"fmt"
	"math"
	"math/rand"
	"runtime"
	"strings"
	"sync"
	"testing"
	"unsafe"
)

func unsafeAdd(p unsafe.Pointer, n uintptr) unsafe.Pointer { return unsafe.Pointer(uintptr(p) + n) }

func cpuContext(t *testing.T) *Context {
	t.Helper()
	ctx, err := NewCPUContext(0)
	if err != nil {
		t.Fatalf("NewCPUContext: %v", err)
	}
	t.Cleanup(func() {
		if err := ctx.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return ctx
}

func randn(rng *rand.Rand, n int, sd float64) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = rng.NormFloat64() * sd
	}
	return v
}

func toF32(x []float64) []float32 {
	y := make([]float32, len(x))
	for i, v := range x {
		y[i] = float32(v)
	}
	return y
}

func fromF32(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

func relL2(a, ref []float64) float64 {
	num, den := 0.0, 0.0
	for i := range a {
		num += (a[i] - ref[i]) * (a[i] - ref[i])
		den += ref[i] * ref[i]
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// wantStatus asserts err is a *Error with the given status and returns it.
func wantStatus(t *testing.T, what string, err error, want Status) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Errorf("%s: got %v (%T), want *Error with status %d (%s)", what, err, err, want, want)
		return nil
	}
	if e.Status != want {
		t.Errorf("%s: status %d (%s), want %d (%s); message %q", what, e.Status, e.Status, want, want, e.Message)
	}
	if e.Message == "" {
		t.Errorf("%s: empty message", what)
	}
	if !errors.Is(err, &Error{Status: want}) {
		t.Errorf("%s: errors.Is does not match the status", what)
	}
	return e
}

const sentinel = float32(-12345.5)

func filled(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = sentinel
	}
	return v
}

func untouched(v []float32) bool {
	for _, x := range v {
		if x != sentinel {
			return false
		}
	}
	return true
}

func TestVersion(t *testing.T) {
	if Version() != HeaderVersion() {
		t.Errorf("library version %d, header %d", Version(), HeaderVersion())
	}
	if VersionString() == "" {
		t.Error("empty version string")
	}
	if StatusInvalidShape.String() == "" || Status(999).String() != "unknown status code" {
		t.Errorf("status strings: %q %q", StatusInvalidShape, Status(999))
	}
	c := DefaultConfig()
	if c.BlockSize != 64 || c.NLocal != 1 || !c.Causal || c.Alpha != 1.5 || c.Selection != SelectPerGroup || !c.Deterministic {
		t.Errorf("defaults: %+v", c)
	}
	if _, err := CudaAvailable(); err != nil {
		t.Errorf("CudaAvailable: %v", err)
	}
}

func TestContextLifetime(t *testing.T) {
	ctx, err := NewContext(&ContextOptions{Backend: BackendCPU, NumThreads: 2})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := ctx.Backend(); err != nil || b != BackendCPU {
		t.Errorf("Backend() = %v, %v", b, err)
	}
	if err := ctx.SetStream(0); err != nil {
		t.Errorf("SetStream on CPU: %v", err)
	}
	if err := ctx.Prepare(); err != nil {
		t.Errorf("Prepare on CPU: %v", err)
	}
	if err := ctx.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := ctx.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	_, err = ctx.Backend()
	wantStatus(t, "closed context", err, StatusNullPointer)

	_, err = NewContext(&ContextOptions{Backend: Backend(9)})
	wantStatus(t, "backend 9", err, StatusInvalidArgument)
	if ok, _ := CudaAvailable(); !ok {
		_, err = NewContext(&ContextOptions{Backend: BackendCUDA})
		wantStatus(t, "CUDA without a device", err, StatusNoDevice)
	}
	// Forgotten contexts are closed by the finalizer (exercised, not observable).
	for i := 0; i < 4; i++ {
		if _, err := NewCPUContext(1); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.GC()
}

type refCase struct {
	dims refDims
	cfg  refConfig
}

func (c refCase) String() string {
	return fmt.Sprintf("N%d Lq%d Lk%d Hq%d Hkv%d D%d B%d nl%d causal=%v perHead=%v alpha=%g",
		c.dims.n, c.dims.lq, c.dims.lk, c.dims.hq, c.dims.hkv, c.dims.d, c.cfg.b, c.cfg.nLocal, c.cfg.causal, c.cfg.perHead, c.cfg.alpha)
}

func (c refCase) config(prec Precision) *Config {
	cfg := DefaultConfig()
	cfg.BlockSize = int32(c.cfg.b)
	cfg.NLocal = int32(c.cfg.nLocal)
	cfg.Causal = c.cfg.causal
	if c.cfg.perHead {
		cfg.Selection = SelectPerHead
	}
	cfg.Alpha = float32(c.cfg.alpha)
	cfg.Scale = float32(c.cfg.sigma)
	cfg.CoarseScale = float32(c.cfg.sigmaC)
	cfg.Precision = prec
	return &cfg
}

func refCases() []refCase {
	var cs []refCase
	for i, alpha := range []float64{1, 1.25, 1.5, 2} {
		for _, perHead := range []bool{false, true} {
			for _, causal := range []bool{true, false} {
				d := refDims{n: 2, lq: 70, lk: 70, hq: 4, hkv: 2, d: 8}
				if i%2 == 1 {
					d.lq = 23 // chunked prefill: the last rows only
				}
				cs = append(cs, refCase{d, refConfig{b: 16, nLocal: 1 + i%2, causal: causal, perHead: perHead, alpha: alpha, sigmaC: 0.5}})
			}
		}
	}
	return cs
}

// Forward vs a literal pure-Go transcription of SPEC 3 (bisection entmax): per element,
// per row sums, lse and tau.
func TestForwardMatchesReference(t *testing.T) {
	ctx := cpuContext(t)
	rng := rand.New(rand.NewSource(11))
	for _, c := range refCases() {
		s := c.dims
		// Inputs rounded to f32 first, so the f32 and f64 runs see the same values.
		q := fromF32(toF32(randn(rng, s.n*s.lq*s.hq*s.d, 2)))
		k := fromF32(toF32(randn(rng, s.n*s.lk*s.hkv*s.d, 2)))
		v := fromF32(toF32(randn(rng, s.n*s.lk*s.hkv*s.d, 1)))
		ro, rlse, rtau, dropped := refForward(s, c.cfg, q, k, v)
		if c.cfg.alpha > 1 && dropped == 0 {
			t.Errorf("%v: entmax dropped no candidate block; the case tests no sparsity", c)
		}
		qs := []int64{int64(s.n), int64(s.lq), int64(s.hq), int64(s.d)}
		ks := []int64{int64(s.n), int64(s.lk), int64(s.hkv), int64(s.d)}
		ss := []int64{int64(s.n), int64(s.hq), int64(s.lq)}

		// f64 tensors, f64 accumulation: agreement to rounding.
		o64 := make([]float64, len(ro))
		lse64 := make([]float64, len(rlse))
		tau64 := make([]float64, len(rtau))
		err := ctx.Forward(c.config(PrecisionF64), &ForwardArgs{
			Q: Float64s(q, qs...), K: Float64s(k, ks...), V: Float64s(v, ks...),
			O: Float64s(o64, qs...), LSE: Float64s(lse64, ss...), Tau: Float64s(tau64, ss...),
		})
		if err != nil {
			t.Fatalf("%v: f64 forward: %v", c, err)
		}
		if e := relL2(o64, ro); e > 1e-9 {
			t.Errorf("%v: f64 output rel L2 %g", c, e)
		}
		// Row sums (sum over D of each output row).
		worstRow := 0.0
		for r := 0; r < len(ro)/s.d; r++ {
			a, b := 0.0, 0.0
			for x := 0; x < s.d; x++ {
				a += o64[r*s.d+x]
				b += ro[r*s.d+x]
			}
			worstRow = math.Max(worstRow, math.Abs(a-b))
		}
		if worstRow > 1e-9 {
			t.Errorf("%v: row sums differ by %g", c, worstRow)
		}
		sawTau := false
		for i := range rtau {
			if math.IsInf(rtau[i], -1) != math.IsInf(tau64[i], -1) {
				t.Errorf("%v: tau[%d] = %g, reference %g", c, i, tau64[i], rtau[i])
				break
			}
			if !math.IsInf(rtau[i], -1) {
				sawTau = true
				if math.Abs(rtau[i]-tau64[i]) > 1e-9 {
					t.Errorf("%v: tau[%d] = %.15g, reference %.15g", c, i, tau64[i], rtau[i])
					break
				}
			}
			if math.Abs(rlse[i]-lse64[i]) > 1e-9 {
				t.Errorf("%v: lse[%d] = %.15g, reference %.15g", c, i, lse64[i], rlse[i])
				break
			}
		}
		if !sawTau {
			t.Errorf("%v: no row had candidate blocks; the case tests nothing sparse", c)
		}

		// f32 tensors, default accumulation: the accuracy contract (1e-5 rel L2).
		o32 := filled(len(ro))
		lse32 := filled(len(rlse))
		err = ctx.Forward(c.config(PrecisionDefault), &ForwardArgs{
			Q: Float32s(toF32(q), qs...), K: Float32s(toF32(k), ks...), V: Float32s(toF32(v), ks...),
			O: Float32s(o32, qs...), LSE: Float32s(lse32, ss...),
		})
		if err != nil {
			t.Fatalf("%v: f32 forward: %v", c, err)
		}
		if e := relL2(fromF32(o32), ro); e > 1e-5 {
			t.Errorf("%v: f32 output rel L2 %g", c, e)
		}
	}
}

// Short context: no candidate block, so plain causal softmax (and tau = -inf).
func TestShortContextIsDenseSoftmax(t *testing.T) {
	ctx := cpuContext(t)
	rng := rand.New(rand.NewSource(12))
	s := refDims{n: 1, lq: 9, lk: 9, hq: 2, hkv: 1, d: 16}
	q, k, v := randn(rng, s.lq*s.hq*s.d, 1), randn(rng, s.lk*s.d, 1), randn(rng, s.lk*s.d, 1)
	o := make([]float64, len(q))
	tau := make([]float64, s.hq*s.lq)
	cfg := DefaultConfig()
	cfg.Precision = PrecisionF64
	err := ctx.Forward(&cfg, &ForwardArgs{Q: Float64s(q, 1, 9, 2, 16), K: Float64s(k, 1, 9, 1, 16), V: Float64s(v, 1, 9, 1, 16),
		O: Float64s(o, 1, 9, 2, 16), Tau: Float64s(tau, 1, 2, 9)})
	if err != nil {
		t.Fatal(err)
	}
	for r := 0; r < s.lq; r++ {
		for h := 0; h < s.hq; h++ {
			qr := q[(r*s.hq+h)*s.d:][:s.d]
			var l []float64
			mx := math.Inf(-1)
			for i := 0; i <= r; i++ {
				d := 0.0
				for x := 0; x < s.d; x++ {
					d += qr[x] * k[i*s.d+x]
				}
				l = append(l, d/4)
				mx = math.Max(mx, d/4)
			}
			den := 0.0
			for i := range l {
				l[i] = math.Exp(l[i] - mx)
				den += l[i]
			}
			for x := 0; x < s.d; x++ {
				want := 0.0
				for i := range l {
					want += l[i] / den * v[i*s.d+x]
				}
				if got := o[(r*s.hq+h)*s.d+x]; math.Abs(got-want) > 1e-12 {
					t.Fatalf("row %d head %d dim %d: %g, dense softmax %g", r, h, x, got, want)
				}
			}
		}
	}
	for _, x := range tau {
		if !math.IsInf(x, -1) {
			t.Fatalf("tau %g, want -inf without candidates", x)
		}
	}
}

// Decode over a paged cache (pages permuted, page_size < B) equals the forward's last row.
func TestDecodeEqualsForwardLastRow(t *testing.T) {
	ctx := cpuContext(t)
	rng := rand.New(rand.NewSource(13))
	const L, Hq, Hkv, D, B, PS, P = 150, 4, 2, 16, 32, 16, 12
	q := toF32(randn(rng, L*Hq*D, 2))
	k := toF32(randn(rng, L*Hkv*D, 2))
	v := toF32(randn(rng, L*Hkv*D, 1))
	cfg := DefaultConfig()
	cfg.BlockSize = B
	o := make([]float32, len(q))
	lse := make([]float32, Hq*L)
	if err := ctx.Forward(&cfg, &ForwardArgs{Q: Float32s(q, 1, L, Hq, D), K: Float32s(k, 1, L, Hkv, D), V: Float32s(v, 1, L, Hkv, D),
		O: Float32s(o, 1, L, Hq, D), LSE: Float32s(lse, 1, Hq, L)}); err != nil {
		t.Fatal(err)
	}
	table := make([]int32, P)
	for p := range table {
		table[p] = int32((p * 7) % P)
	}
	kc := make([]float32, P*PS*Hkv*D)
	vc := make([]float32, P*PS*Hkv*D)
	for tok := 0; tok < L; tok++ {
		dst := (int(table[tok/PS])*PS + tok%PS) * Hkv * D
		copy(kc[dst:dst+Hkv*D], k[tok*Hkv*D:])
		copy(vc[dst:dst+Hkv*D], v[tok*Hkv*D:])
	}
	pooled := filled(P * 1 * Hkv * D)
	lens := []int32{L}
	pool := &PoolKeysPagedArgs{KCache: Float32s(kc, P, PS, Hkv, D), PooledCache: Float32s(pooled, P, 1, Hkv, D),
		BlockTable: Int32s(table, 1, P), PrevSeqLens: Int32s([]int32{0}, 1), SeqLens: Int32s(lens, 1)}
	if n, err := ctx.PoolKeysPagedWorkspaceSize(&cfg, pool.KCache, pool.PooledCache, pool.BlockTable, pool.SeqLens); err != nil {
		t.Fatal(err)
	} else {
		pool.Workspace = HostWorkspace(n)
	}
	if err := ctx.PoolKeysPaged(&cfg, pool); err != nil {
		t.Fatal(err)
	}
	q1 := append([]float32(nil), q[(L-1)*Hq*D:]...)
	o1 := filled(Hq * D)
	lse1 := filled(Hq)
	dec := &DecodeArgs{Q: Float32s(q1, 1, 1, Hq, D), KCache: Float32s(kc, P, PS, Hkv, D), VCache: Float32s(vc, P, PS, Hkv, D),
		PooledCache: Float32s(pooled, P, 1, Hkv, D), BlockTable: Int32s(table, 1, P), SeqLens: Int32s(lens, 1),
		O: Float32s(o1, 1, 1, Hq, D), LSE: Float32s(lse1, 1, Hq, 1)}
	n, err := ctx.DecodeWorkspaceSize(&cfg, dec.Q, dec.KCache, dec.PooledCache, dec.BlockTable, dec.SeqLens)
	if err != nil {
		t.Fatal(err)
	}
	dec.Workspace = HostWorkspace(n)
	if err := ctx.Decode(&cfg, dec); err != nil {
		t.Fatal(err)
	}
	want := fromF32(o[(L-1)*Hq*D:])
	if e := relL2(fromF32(o1), want); e > 1e-6 {
		t.Errorf("decode vs forward last row: rel L2 %g", e)
	}
	for h := 0; h < Hq; h++ {
		if d := math.Abs(float64(lse1[h] - lse[h*L+L-1])); d > 1e-5 {
			t.Errorf("head %d: decode lse %g, forward %g", h, lse1[h], lse[h*L+L-1])
		}
	}

	// Error path: an out-of-range page index; nothing written.
	bad := append([]int32(nil), table...)
	bad[2] = P + 3
	o1b := filled(Hq * D)
	dec.BlockTable, dec.O, dec.LSE, dec.Workspace = Int32s(bad, 1, P), Float32s(o1b, 1, 1, Hq, D), nil, Workspace{}
	wantStatus(t, "decode with a bad page", ctx.Decode(&cfg, dec), StatusOutOfRange)
	if !untouched(o1b) {
		t.Error("decode wrote o on error")
	}
}

// Backward: sum_i dv_i equals the group's sum of dO; sum_i dk_i = 0; finite differences.
func TestBackward(t *testing.T) {
	ctx := cpuContext(t)
	rng := rand.New(rand.NewSource(14))
	s := refDims{n: 1, lq: 40, lk: 64, hq: 4, hkv: 2, d: 8}
	q, k, v := randn(rng, s.lq*s.hq*s.d, 1.5), randn(rng, s.lk*s.hkv*s.d, 1.5), randn(rng, s.lk*s.hkv*s.d, 1)
	dO := randn(rng, len(q), 1)
	cfg := DefaultConfig()
	cfg.BlockSize, cfg.Precision, cfg.Alpha = 16, PrecisionF64, 1.5
	qs, ks, ss := []int64{1, 40, 4, 8}, []int64{1, 64, 2, 8}, []int64{1, 4, 40}
	fwd := func(q, k, v []float64) (o, lse, tau []float64) {
		o, lse, tau = make([]float64, len(q)), make([]float64, s.hq*s.lq), make([]float64, s.hq*s.lq)
		if err := ctx.Forward(&cfg, &ForwardArgs{Q: Float64s(q, qs...), K: Float64s(k, ks...), V: Float64s(v, ks...),
			O: Float64s(o, qs...), LSE: Float64s(lse, ss...), Tau: Float64s(tau, ss...)}); err != nil {
			t.Fatal(err)
		}
		return
	}
	loss := func() float64 {
		o, _, _ := fwd(q, k, v)
		l := 0.0
		for i := range o {
			l += o[i] * dO[i]
		}
		return l
	}
	o, lse, tau := fwd(q, k, v)
	dq, dk, dv := make([]float64, len(q)), make([]float64, len(k)), make([]float64, len(v))
	if n, err := ctx.BackwardWorkspaceSize(&cfg, Float64s(q, qs...), Float64s(k, ks...), Float64s(v, ks...), nil); err != nil {
		t.Fatal(err)
	} else if n == 0 {
		t.Log("backward needs no workspace")
	}
	if err := ctx.Backward(&cfg, &BackwardArgs{Q: Float64s(q, qs...), K: Float64s(k, ks...), V: Float64s(v, ks...),
		O: Float64s(o, qs...), DO: Float64s(dO, qs...), LSE: Float64s(lse, ss...), Tau: Float64s(tau, ss...),
		DQ: Float64s(dq, qs...), DK: Float64s(dk, ks...), DV: Float64s(dv, ks...)}); err != nil {
		t.Fatal(err)
	}
	g := s.hq / s.hkv
	for kh := 0; kh < s.hkv; kh++ {
		for x := 0; x < s.d; x++ {
			sv, sk, so := 0.0, 0.0, 0.0
			for i := 0; i < s.lk; i++ {
				sv += dv[(i*s.hkv+kh)*s.d+x]
				sk += dk[(i*s.hkv+kh)*s.d+x]
			}
			for r := 0; r < s.lq; r++ {
				for h := kh * g; h < (kh+1)*g; h++ {
					so += dO[(r*s.hq+h)*s.d+x]
				}
			}
			if math.Abs(sv-so) > 1e-9 || math.Abs(sk) > 1e-9 {
				t.Fatalf("kv head %d dim %d: sum dv %g vs sum dO %g; sum dk %g", kh, x, sv, so, sk)
			}
		}
	}
	const eps = 1e-6
	worst := 0.0
	check := func(x, grad []float64, step int) {
		for i := 0; i < len(x); i += step {
			keep := x[i]
			x[i] = keep + eps
			lp := loss()
			x[i] = keep - eps
			lm := loss()
			x[i] = keep
			num := (lp - lm) / (2 * eps)
			worst = math.Max(worst, math.Abs(num-grad[i])/math.Max(1, math.Abs(num)))
		}
	}
	check(q, dq, 41)
	check(k, dk, 37)
	check(v, dv, 43)
	if worst > 1e-6 {
		t.Errorf("finite differences: worst rel err %g", worst)
	}
}

// Every error: a *Error with the right status and message; outputs untouched.
func TestErrors(t *testing.T) {
	ctx := cpuContext(t)
	rng := rand.New(rand.NewSource(15))
	q := toF32(randn(rng, 40*2*8, 1))
	k := toF32(randn(rng, 40*1*8, 1))
	v := toF32(randn(rng, 40*1*8, 1))
	k64 := fromF32(k)
	o, lse, tau := filled(len(q)), filled(2*40), filled(2*40)
	args := func() *ForwardArgs {
		return &ForwardArgs{Q: Float32s(q, 1, 40, 2, 8), K: Float32s(k, 1, 40, 1, 8), V: Float32s(v, 1, 40, 1, 8),
			O: Float32s(o, 1, 40, 2, 8), LSE: Float32s(lse, 1, 2, 40), Tau: Float32s(tau, 1, 2, 40)}
	}
	good := DefaultConfig()
	good.BlockSize = 16
	with := func(f func(*Config)) *Config { c := good; f(&c); return &c }

	cases := []struct {
		name string
		cfg  *Config
		mod  func(*ForwardArgs)
		want Status
		in   string // a word the message must contain
	}{
		{"block size 48", with(func(c *Config) { c.BlockSize = 48 }), nil, StatusInvalidConfig, "block_size"},
		{"alpha 3", with(func(c *Config) { c.Alpha = 3 }), nil, StatusInvalidConfig, "alpha"},
		{"alpha NaN", with(func(c *Config) { c.Alpha = float32(math.NaN()) }), nil, StatusInvalidConfig, "alpha"},
		{"causal n_local 0", with(func(c *Config) { c.NLocal = 0 }), nil, StatusInvalidConfig, "n_local"},
		{"selection 5", with(func(c *Config) { c.Selection = 5 }), nil, StatusInvalidConfig, "selection"},
		{"negative scale", with(func(c *Config) { c.Scale = -1 }), nil, StatusInvalidConfig, "scale"},
		{"q rank 3", &good, func(a *ForwardArgs) { a.Q = Float32s(q, 40, 2, 8) }, StatusInvalidShape, "q"},
		{"Hq not a multiple of Hkv", &good, func(a *ForwardArgs) {
			a.Q, a.O = Float32s(q, 1, 1, 3, 8), Float32s(o, 1, 1, 3, 8)
			a.K, a.V = Float32s(k, 1, 20, 2, 8), Float32s(v, 1, 20, 2, 8)
			a.LSE, a.Tau = nil, nil
		}, StatusInvalidShape, "Hq"},
		{"k f64", &good, func(a *ForwardArgs) { a.K = Float64s(k64, 1, 40, 1, 8) }, StatusInvalidDtype, "k"},
		{"lse f16", &good, func(a *ForwardArgs) { a.LSE = Raw16(make([]uint16, 80), F16, 1, 2, 40) }, StatusInvalidDtype, "lse"},
		{"q inner stride 2", &good, func(a *ForwardArgs) {
			a.Q = Float32s(q, 1, 20, 2, 8).WithStrides(640, 32, 16, 2)
			a.O = Float32s(o, 1, 20, 2, 8)
			a.LSE, a.Tau = nil, nil
		}, StatusInvalidStride, "q"},
		{"overlapping o", &good, func(a *ForwardArgs) { a.O = Float32s(o, 1, 40, 2, 8).WithStrides(0, 0, 8, 1) }, StatusInvalidStride, "o"},
		{"o aliases q", &good, func(a *ForwardArgs) { a.O = Float32s(q, 1, 40, 2, 8) }, StatusInvalidArgument, "overlaps"},
		{"missing v", &good, func(a *ForwardArgs) { a.V = nil }, StatusNullPointer, "v"},
		{"head_alpha 2.5", &good, func(a *ForwardArgs) { a.HeadAlpha = Float32s([]float32{2.5, 1.5}, 2) }, StatusInvalidArgument, "head_alpha"},
		{"device pointer 0 with elements", &good, func(a *ForwardArgs) { a.K = Device(0, F32, 1, 40, 1, 8) }, StatusNullPointer, "k"},
		{"misaligned device pointer", &good, func(a *ForwardArgs) { a.K = Device(2, F32, 1, 40, 1, 8) }, StatusMisaligned, "k"},
		{"workspace too small", &good, func(a *ForwardArgs) { a.Workspace = HostWorkspace(1) }, StatusWorkspaceTooSmall, "workspace"},
		{"workspace NULL with a size", &good, func(a *ForwardArgs) { a.Workspace = Workspace{Size: 64} }, StatusNullPointer, "workspace"},
		// Checked in Go before the call: the library cannot see a slice's length.
		{"slice too short", &good, func(a *ForwardArgs) { a.K = Float32s(k[:100], 1, 40, 1, 8) }, StatusInvalidShape, "slice"},
		{"rank 7", &good, func(a *ForwardArgs) { a.Q = Float32s(q, 1, 1, 1, 40, 2, 8, 1) }, StatusInvalidShape, "rank"},
	}
	for _, c := range cases {
		a := args()
		if c.mod != nil {
			c.mod(a)
		}
		e := wantStatus(t, c.name, ctx.Forward(c.cfg, a), c.want)
		if e != nil && !strings.Contains(e.Message, c.in) {
			t.Errorf("%s: message %q should mention %q", c.name, e.Message, c.in)
		}
		if !untouched(o) || !untouched(lse) || !untouched(tau) {
			t.Fatalf("%s: an output was written on error", c.name)
		}
	}
	// The misaligned workspace case needs a real aligned buffer to offset from.
	need, err := ctx.ForwardWorkspaceSize(&good, Float32s(q, 1, 40, 2, 8), Float32s(k, 1, 40, 1, 8), Float32s(v, 1, 40, 1, 8), nil)
	if err != nil {
		t.Fatal(err)
	}
	ws := HostWorkspace(need + 512)
	a := args()
	a.Workspace = Workspace{Data: unsafeAdd(ws.Data, 8), Size: need + 256}
	wantStatus(t, "misaligned workspace", ctx.Forward(&good, a), StatusMisaligned)
	a.Workspace = ws
	if err := ctx.Forward(&good, a); err != nil {
		t.Fatalf("forward with an aligned workspace: %v", err)
	}
	if untouched(o) {
		t.Fatal("successful forward did not write o")
	}

	// Backward: pooled_k without d_pooled_k.
	dq, dk, dv := filled(len(q)), filled(len(k)), filled(len(v))
	pk := make([]float32, 3*8)
	err = ctx.Backward(&good, &BackwardArgs{Q: Float32s(q, 1, 40, 2, 8), K: Float32s(k, 1, 40, 1, 8), V: Float32s(v, 1, 40, 1, 8),
		PooledK: Float32s(pk, 1, 3, 1, 8), O: Float32s(o, 1, 40, 2, 8), DO: Float32s(o, 1, 40, 2, 8),
		LSE: Float32s(lse, 1, 2, 40), Tau: Float32s(tau, 1, 2, 40),
		DQ: Float32s(dq, 1, 40, 2, 8), DK: Float32s(dk, 1, 40, 1, 8), DV: Float32s(dv, 1, 40, 1, 8)})
	wantStatus(t, "backward without d_pooled_k", err, StatusNullPointer)
	if !untouched(dq) || !untouched(dk) || !untouched(dv) {
		t.Error("backward wrote a gradient on error")
	}
}

// MergeStates: attention over all keys equals the merge of attention over two disjoint key
// halves (non-causal with every block local is plain softmax attention).
func TestMergeStates(t *testing.T) {
	ctx := cpuContext(t)
	rng := rand.New(rand.NewSource(16))
	const Lq, Lk, A, H, D = 7, 50, 20, 2, 8
	q, k, v := toF32(randn(rng, Lq*H*D, 1)), toF32(randn(rng, Lk*H*D, 1)), toF32(randn(rng, Lk*H*D, 1))
	cfg := DefaultConfig()
	cfg.BlockSize, cfg.Causal, cfg.NLocal = 16, false, 64
	fwd := func(from, to int, o, lse []float32) {
		n := int64(to - from)
		if err := ctx.Forward(&cfg, &ForwardArgs{Q: Float32s(q, 1, Lq, H, D), K: Float32s(k[from*H*D:to*H*D], 1, n, H, D),
			V: Float32s(v[from*H*D:to*H*D], 1, n, H, D), O: Float32s(o, 1, Lq, H, D), LSE: Float32s(lse, 1, H, Lq)}); err != nil {
			t.Fatal(err)
		}
	}
	full, fullLSE := make([]float32, Lq*H*D), make([]float32, H*Lq)
	parts, partsLSE := make([]float32, 2*Lq*H*D), make([]float32, 2*H*Lq)
	fwd(0, Lk, full, fullLSE)
	fwd(0, A, parts[:Lq*H*D], partsLSE[:H*Lq])
	fwd(A, Lk, parts[Lq*H*D:], partsLSE[H*Lq:])
	merged, mergedLSE := filled(Lq*H*D), filled(H*Lq)
	if err := ctx.MergeStates(&MergeStatesArgs{OParts: Float32s(parts, 2, 1, Lq, H, D), LSEParts: Float32s(partsLSE, 2, 1, H, Lq),
		O: Float32s(merged, 1, Lq, H, D), LSE: Float32s(mergedLSE, 1, H, Lq)}); err != nil {
		t.Fatal(err)
	}
	if e := relL2(fromF32(merged), fromF32(full)); e > 1e-6 {
		t.Errorf("merged vs full: rel L2 %g", e)
	}
	for i := range mergedLSE {
		if math.Abs(float64(mergedLSE[i]-fullLSE[i])) > 1e-5 {
			t.Fatalf("lse[%d]: merged %g, full %g", i, mergedLSE[i], fullLSE[i])
		}
	}
	out := filled(Lq * H * D)
	err := ctx.MergeStates(&MergeStatesArgs{OParts: Float32s(parts, 2, 1, Lq, H, D), LSEParts: Float32s(partsLSE, 2, 1, Lq, H),
		O: Float32s(out, 1, Lq, H, D)})
	wantStatus(t, "merge with lse_parts [S, N, L, H]", err, StatusInvalidShape)
	if !untouched(out) {
		t.Error("merge wrote o on error")
	}
}

// Error messages are per call even with many goroutines (the library's message is
// thread-local; the binding reads it inside the failing C call).
func TestConcurrentErrorMessages(t *testing.T) {
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			ctx, err := NewCPUContext(1)
			if err != nil {
				errs <- err
				return
			}
			defer ctx.Close()
			q := make([]float32, 4*8)
			o := make([]float32, 4*8)
			for i := 0; i < 50; i++ {
				cfg := DefaultConfig()
				var want Status
				var word string
				if (g+i)%2 == 0 {
					cfg.BlockSize, want, word = 24, StatusInvalidConfig, "block_size"
				} else {
					cfg.BlockSize, want, word = 16, StatusInvalidShape, "rank"
				}
				a := &ForwardArgs{Q: Float32s(q, 1, 4, 1, 8), K: Float32s(q, 1, 4, 1, 8), V: Float32s(q, 1, 4, 1, 8), O: Float32s(o, 1, 4, 1, 8)}
				if want == StatusInvalidShape {
					a.K = Float32s(q, 4, 1, 8)
				}
				err := ctx.Forward(&cfg, a)
				var e *Error
				if !errors.As(err, &e) || e.Status != want || !strings.Contains(e.Message, word) {
					errs <- fmt.Errorf("goroutine %d call %d: got %v, want status %d mentioning %q", g, i, err, want, word)
					return
				}
				runtime.Gosched()
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// ---------------------------------------------------------------------------------------
// A literal pure-Go transcription of SPEC 3 (the forward), for the tests above.

// refDims are the sizes of a forward problem, row-major layouts as in the C API.
type refDims struct {
	n, lq, lk, hq, hkv, d int
}

// refConfig is the subset of Config the reference needs.
type refConfig struct {
	b, nLocal int
	causal    bool
	perHead   bool
	alpha     float64
	sigma     float64 // 0 = 1/sqrt(D)
	sigmaC    float64 // 0 = sigma
}

func floorDiv(a, b int) int {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// refBlocks returns Cand(t) and Local(t) (SPEC 3.2).
func refBlocks(t, nb, b, nLocal int, causal bool) (cand, local []int) {
	c := floorDiv(t, b)
	if causal {
		if t < 0 {
			return nil, nil
		}
		for j := 0; j < nb; j++ {
			if j > c-nLocal && j <= c {
				local = append(local, j)
			} else if j <= c-nLocal {
				cand = append(cand, j)
			}
		}
		return
	}
	for j := 0; j < nb; j++ {
		dj := j - c
		if dj < 0 {
			dj = -dj
		}
		if dj < nLocal {
			local = append(local, j)
		} else {
			cand = append(cand, j)
		}
	}
	return
}

// refTau solves alpha-entmax's threshold by bisection (SPEC 3.3): sum_j p_j = 1 with
// p_j = [(alpha-1) z_j - tau]_+^(1/(alpha-1)); alpha = 1: tau = logsumexp(z).
func refTau(z []float64, alpha float64) float64 {
	if len(z) == 0 {
		return math.Inf(-1)
	}
	mx := math.Inf(-1)
	for _, x := range z {
		mx = math.Max(mx, x)
	}
	if alpha == 1 {
		s := 0.0
		for _, x := range z {
			s += math.Exp(x - mx)
		}
		return mx + math.Log(s)
	}
	am := (alpha - 1) * mx
	lo := am - 1
	hi := am - math.Pow(float64(len(z)), 1-alpha)
	mass := func(tau float64) float64 {
		s := 0.0
		for _, x := range z {
			if y := (alpha-1)*x - tau; y > 0 {
				s += math.Pow(y, 1/(alpha-1))
			}
		}
		return s
	}
	for i := 0; i < 200; i++ {
		mid := 0.5 * (lo + hi)
		if mid <= lo || mid >= hi {
			break
		}
		if mass(mid) >= 1 {
			lo = mid
		} else {
			hi = mid
		}
	}
	return 0.5 * (lo + hi)
}

// refForward evaluates SPEC 3 literally in float64: mean-pooled keys, candidate and local
// blocks, alpha-entmax by bisection, the log prior, and the fine softmax.
// Returns o [N, Lq, Hq, D], lse and tau [N, Hq, Lq], and how many candidate blocks
// entmax dropped (x_j <= 0), summed over rows and heads.
func refForward(s refDims, cfg refConfig, q, k, v []float64) (o, lse, tau []float64, dropped int) {
	sigma := cfg.sigma
	if sigma == 0 {
		sigma = 1 / math.Sqrt(float64(s.d))
	}
	sigmaC := cfg.sigmaC
	if sigmaC == 0 {
		sigmaC = sigma
	}
	g := s.hq / s.hkv
	nb := (s.lk + cfg.b - 1) / cfg.b
	qAt := func(n, r, h int) []float64 { i := ((n*s.lq+r)*s.hq + h) * s.d; return q[i : i+s.d] }
	kAt := func(n, i, h int) []float64 { j := ((n*s.lk+i)*s.hkv + h) * s.d; return k[j : j+s.d] }
	vAt := func(n, i, h int) []float64 { j := ((n*s.lk+i)*s.hkv + h) * s.d; return v[j : j+s.d] }
	dot := func(a, b []float64) float64 {
		x := 0.0
		for i := range a {
			x += a[i] * b[i]
		}
		return x
	}
	o = make([]float64, s.n*s.lq*s.hq*s.d)
	lse = make([]float64, s.n*s.hq*s.lq)
	tau = make([]float64, s.n*s.hq*s.lq)
	for n := 0; n < s.n; n++ {
		// Pooled keys: kbar[kh][j] = mean of the keys present in block j.
		kbar := make([][][]float64, s.hkv)
		for kh := 0; kh < s.hkv; kh++ {
			kbar[kh] = make([][]float64, nb)
			for j := 0; j < nb; j++ {
				m := make([]float64, s.d)
				end := (j + 1) * cfg.b
				if end > s.lk {
					end = s.lk
				}
				for i := j * cfg.b; i < end; i++ {
					for x, kv := range kAt(n, i, kh) {
						m[x] += kv
					}
				}
				for x := range m {
					m[x] /= float64(end - j*cfg.b)
				}
				kbar[kh][j] = m
			}
		}
		for r := 0; r < s.lq; r++ {
			t := s.lk - s.lq + r
			cand, local := refBlocks(t, nb, cfg.b, cfg.nLocal, cfg.causal)
			for h := 0; h < s.hq; h++ {
				kh := h / g
				// Heads sharing one distribution: the group (per-group) or h alone.
				heads := []int{h}
				if !cfg.perHead {
					heads = nil
					for hh := kh * g; hh < (kh+1)*g; hh++ {
						heads = append(heads, hh)
					}
				}
				z := make([]float64, len(cand))
				for ci, j := range cand {
					for _, hh := range heads {
						z[ci] += sigmaC * dot(qAt(n, r, hh), kbar[kh][j])
					}
					z[ci] /= float64(len(heads))
				}
				th := refTau(z, cfg.alpha)
				tau[(n*s.hq+h)*s.lq+r] = th
				type blk struct {
					j    int
					beta float64
				}
				var blocks []blk
				for ci, j := range cand {
					if cfg.alpha == 1 {
						blocks = append(blocks, blk{j, z[ci] - th})
					} else if x := (cfg.alpha-1)*z[ci] - th; x > 0 {
						blocks = append(blocks, blk{j, math.Log(x) / (cfg.alpha - 1)})
					} else {
						dropped++
					}
				}
				for _, j := range local {
					blocks = append(blocks, blk{j, 0})
				}
				var logits []float64
				var keys []int
				for _, bl := range blocks {
					end := (bl.j + 1) * cfg.b
					if end > s.lk {
						end = s.lk
					}
					for i := bl.j * cfg.b; i < end; i++ {
						if cfg.causal && i > t {
							continue
						}
						logits = append(logits, sigma*dot(qAt(n, r, h), kAt(n, i, kh))+bl.beta)
						keys = append(keys, i)
					}
				}
				orow := o[((n*s.lq+r)*s.hq+h)*s.d:][:s.d]
				if len(keys) == 0 {
					lse[(n*s.hq+h)*s.lq+r] = math.Inf(-1)
					continue
				}
				mx := math.Inf(-1)
				for _, l := range logits {
					mx = math.Max(mx, l)
				}
				den := 0.0
				for _, l := range logits {
					den += math.Exp(l - mx)
				}
				for ii, i := range keys {
					a := math.Exp(logits[ii]-mx) / den
					for x, vv := range vAt(n, i, kh) {
						orow[x] += a * vv
					}
				}
				lse[(n*s.hq+h)*s.lq+r] = mx + math.Log(den)
			}
		}
	}
	return
}
