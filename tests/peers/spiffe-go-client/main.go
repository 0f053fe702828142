// spiffe-go-client is a SPIFFE Workload API client written with go-spiffe, the Go SPIFFE
// library, used with its default settings. Deputy's interop tests run it against `deputy
// issuer` to show that Go workloads get their identities from it exactly as from a SPIRE agent.
//
// Each command prints one JSON object on stdout and exits 0, or prints what went wrong on
// stderr and exits 1:
//
//	spiffe-go-client -socket unix:///path x509
//	    the X.509-SVID, verified against the X.509 bundle the API served
//	spiffe-go-client -socket unix:///path jwt -audience A
//	    a JWT-SVID for A, validated offline with the JWT bundles and by the API
//	spiffe-go-client -socket unix:///path watch -rotations N
//	    waits for N X.509-SVID updates pushed on one stream, each a new certificate
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	socket := flag.String("socket", os.Getenv("SPIFFE_ENDPOINT_SOCKET"), "Workload API address (unix:///path)")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long")
	flag.Parse()
	if flag.NArg() < 1 {
		fail(errors.New("usage: spiffe-go-client -socket unix:///path (x509 | jwt -audience A | watch -rotations N)"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(*socket))
	if err != nil {
		fail(fmt.Errorf("connecting to %s: %w", *socket, err))
	}
	defer client.Close()

	var result any
	switch command, args := flag.Arg(0), flag.Args()[1:]; command {
	case "x509":
		result, err = fetchX509(ctx, client)
	case "jwt":
		sub := flag.NewFlagSet("jwt", flag.ExitOnError)
		audience := sub.String("audience", "", "the audience of the token")
		_ = sub.Parse(args)
		result, err = fetchJWT(ctx, client, *audience)
	case "watch":
		sub := flag.NewFlagSet("watch", flag.ExitOnError)
		rotations := sub.Int("rotations", 1, "how many new SVIDs to wait for")
		_ = sub.Parse(args)
		result, err = watch(ctx, client, *rotations)
	default:
		err = fmt.Errorf("unknown command %q", command)
	}
	if err != nil {
		fail(err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "spiffe-go-client:", err)
	os.Exit(1)
}

type x509Result struct {
	SpiffeID    string `json:"spiffe_id"`
	Serial      string `json:"serial"`
	NotAfter    string `json:"not_after"`
	ChainLen    int    `json:"chain_len"`
	Authorities int    `json:"authorities"`
	Verified    bool   `json:"verified"`
}

func fetchX509(ctx context.Context, client *workloadapi.Client) (*x509Result, error) {
	svid, err := client.FetchX509SVID(ctx)
	if err != nil {
		return nil, fmt.Errorf("FetchX509SVID: %w", err)
	}
	bundles, err := client.FetchX509Bundles(ctx)
	if err != nil {
		return nil, fmt.Errorf("FetchX509Bundles: %w", err)
	}
	return describe(svid, bundles)
}

func describe(svid *x509svid.SVID, bundles *x509bundle.Set) (*x509Result, error) {
	bundle, err := bundles.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		return nil, fmt.Errorf("no bundle for %s: %w", svid.ID.TrustDomain(), err)
	}
	id, _, err := x509svid.Verify(svid.Certificates, bundles)
	if err != nil {
		return nil, fmt.Errorf("the SVID does not verify against the served bundle: %w", err)
	}
	if id != svid.ID {
		return nil, fmt.Errorf("verified ID %s differs from the SVID's %s", id, svid.ID)
	}
	leaf := svid.Certificates[0]
	return &x509Result{
		SpiffeID:    svid.ID.String(),
		Serial:      leaf.SerialNumber.String(),
		NotAfter:    leaf.NotAfter.UTC().Format(time.RFC3339),
		ChainLen:    len(svid.Certificates),
		Authorities: len(bundle.X509Authorities()),
		Verified:    true,
	}, nil
}

type jwtResult struct {
	SpiffeID        string   `json:"spiffe_id"`
	Audience        []string `json:"audience"`
	Expiry          string   `json:"expiry"`
	ValidOffline    bool     `json:"valid_offline"`
	ValidByAPI      bool     `json:"valid_by_api"`
	OtherAudience   string   `json:"other_audience_refused"`
	TamperedRefused string   `json:"tampered_refused"`
}

func fetchJWT(ctx context.Context, client *workloadapi.Client, audience string) (*jwtResult, error) {
	if audience == "" {
		return nil, errors.New("jwt needs -audience")
	}
	svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
	if err != nil {
		return nil, fmt.Errorf("FetchJWTSVID: %w", err)
	}
	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		return nil, fmt.Errorf("FetchJWTBundles: %w", err)
	}
	token := svid.Marshal()
	if _, err := jwtsvid.ParseAndValidate(token, bundles, []string{audience}); err != nil {
		return nil, fmt.Errorf("offline validation with the served JWT bundles: %w", err)
	}
	validated, err := client.ValidateJWTSVID(ctx, token, audience)
	if err != nil {
		return nil, fmt.Errorf("ValidateJWTSVID: %w", err)
	}
	if validated.ID != svid.ID {
		return nil, fmt.Errorf("ValidateJWTSVID says %s, the token says %s", validated.ID, svid.ID)
	}
	result := &jwtResult{
		SpiffeID:     svid.ID.String(),
		Audience:     svid.Audience,
		Expiry:       svid.Expiry.UTC().Format(time.RFC3339),
		ValidOffline: true,
		ValidByAPI:   true,
	}
	// Both refusals must happen; their messages are what the test reads.
	if _, err := jwtsvid.ParseAndValidate(token, bundles, []string{"someone-else"}); err == nil {
		return nil, errors.New("a token for another audience validated offline")
	} else {
		result.OtherAudience = err.Error()
	}
	tampered := tamper(token)
	if _, err := client.ValidateJWTSVID(ctx, tampered, audience); err == nil {
		return nil, errors.New("a tampered token was validated by the API")
	} else {
		result.TamperedRefused = err.Error()
	}
	return result, nil
}

// tamper changes the first character of the signature: the token still decodes, but its
// signature no longer matches.
func tamper(token string) string {
	i := strings.LastIndexByte(token, '.') + 1
	c := byte('A')
	if token[i] == 'A' {
		c = 'B'
	}
	return token[:i] + string(c) + token[i+1:]
}

type watchResult struct {
	SpiffeID string   `json:"spiffe_id"`
	Serials  []string `json:"serials"`
}

// watch follows one X.509 context stream until it has seen `rotations` new SVIDs after the
// first, each with a serial it has not seen.
func watch(ctx context.Context, client *workloadapi.Client, rotations int) (*watchResult, error) {
	w := &watcher{want: rotations + 1, seen: map[string]bool{}, enough: make(chan struct{})}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ended := make(chan error, 1)
	go func() { ended <- client.WatchX509Context(ctx, w) }()
	select {
	case <-w.enough:
		return &w.result, nil
	case err := <-ended:
		return nil, fmt.Errorf("the stream ended after %d SVIDs: %v (last error: %v)", len(w.result.Serials), err, w.lastErr)
	case <-ctx.Done():
		return nil, fmt.Errorf("saw %d of %d SVIDs (last error: %v): %w", len(w.result.Serials), w.want, w.lastErr, ctx.Err())
	}
}

// watcher receives the stream's updates (on one goroutine, as go-spiffe calls it).
type watcher struct {
	want    int
	seen    map[string]bool
	result  watchResult
	lastErr error
	enough  chan struct{}
}

func (w *watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	svid := c.DefaultSVID()
	if _, err := describe(svid, c.Bundles); err != nil {
		w.lastErr = err
		return
	}
	serial := svid.Certificates[0].SerialNumber.String()
	if w.seen[serial] || len(w.result.Serials) >= w.want {
		return
	}
	w.seen[serial] = true
	w.result.SpiffeID = svid.ID.String()
	w.result.Serials = append(w.result.Serials, serial)
	if len(w.result.Serials) == w.want {
		close(w.enough)
	}
}

func (w *watcher) OnX509ContextWatchError(err error) {
	w.lastErr = err
}
