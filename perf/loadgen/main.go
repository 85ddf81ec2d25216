// Command loadgen is the HTTP client of the benchmark harness (perf/bench.py builds and
// drives it). It shares the machine with the system it measures, so it is compiled and
// does as little as it can per request.
//
//	loadgen send  -url URL -requests REQUESTS.jsonl -results RESULTS.jsonl [-connections 512] [-send-limit 60s]
//	loadgen fetch -url URL -payments PAYMENTS.jsonl -results RECORDS.jsonl [-concurrency 8] [-deadline 120s]
//
// send offers pre-built payments open loop: each request line carries the time, from the
// start, at which it is due, and it is sent then whatever came back before. Every result
// carries that scheduled time, so a request the client could only send late still counts
// its wait (no coordinated omission). Requests still waiting for a free connection when
// the send limit has passed after the last due time are not sent, so the run ends.
// The HTTP client is in client.go.
//
// fetch asks GET /v1/payments/{id} for every payment, again and again, until the payment's
// status is final (SETTLED, REJECTED, FAILED or HELD by default) or the deadline passes,
// and writes the last answer of each.
//
// Both print one JSON progress line a second on stdout and a JSON summary line at the end,
// with the process's own CPU seconds. Only loopback URLs are accepted.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A pre-built payment, one line of the requests file.
type request struct {
	Tenant string          `json:"tenant"`
	Key    string          `json:"key"`
	Body   json.RawMessage `json:"body"`
	AtUs   int64           `json:"at_us"` // when it is due, in microseconds from the start
}

// One line of the send results file. Times are Unix microseconds (wall clock, the clock
// the product stamps its events with); they are taken from Go's monotonic clock as offsets
// from one wall-clock reading, so a clock step cannot bend them.
type sendResult struct {
	Index       int    `json:"i"`
	ScheduledUs int64  `json:"scheduled_us"`
	SentUs      int64  `json:"sent_us"` // 0 when it was never sent (see Error)
	AnsweredUs  int64  `json:"answered_us"`
	Status      int    `json:"status"` // 0 when no HTTP answer came (see Error)
	PaymentID   string `json:"payment_id,omitempty"`
	RetryAfter  string `json:"retry_after,omitempty"`
	Error       string `json:"error,omitempty"`
}

type payment struct {
	Tenant    string `json:"tenant"`
	PaymentID string `json:"payment_id"`
}

// One line of the fetch results file: the last answer for the payment.
type fetchResult struct {
	PaymentID  string          `json:"payment_id"`
	HTTPStatus int             `json:"http_status"`
	Record     json.RawMessage `json:"record"`
}

func main() {
	// One thread carries 2,000 requests a second. With more, idle threads wake to look
	// for work on every request, CPU the system under test on the same machine needs.
	runtime.GOMAXPROCS(1)
	if len(os.Args) < 2 {
		fail("usage: loadgen send|fetch [flags]")
	}
	var err error
	switch os.Args[1] {
	case "send":
		err = runSend(os.Args[2:])
	case "fetch":
		err = runFetch(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q: want send or fetch", os.Args[1])
	}
	if err != nil {
		fail(err.Error())
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "loadgen:", message)
	os.Exit(2)
}

func runSend(args []string) error {
	flags := flag.NewFlagSet("send", flag.ExitOnError)
	baseURL := flags.String("url", "", "intake base URL (loopback only)")
	requestsPath := flags.String("requests", "", "JSON-lines file of requests")
	resultsPath := flags.String("results", "", "JSON-lines file to write the results to")
	connections := flags.Int("connections", 512, "requests in flight at most (one keep-alive connection each)")
	timeout := flags.Duration("timeout", 30*time.Second, "time limit of one request")
	sendLimit := flags.Duration("send-limit", 60*time.Second, "how long after the last due time requests are still sent")
	keysPath := flags.String("keys", "", "JSON file of {tenant: API key} (payorch up's api-keys.json)")
	flags.Parse(args)
	if err := checkLoopback(*baseURL); err != nil {
		return err
	}
	requests, err := readRequests(*requestsPath)
	if err != nil {
		return err
	}
	auth, err := readKeys(*keysPath)
	if err != nil {
		return err
	}
	client, err := newClient(*baseURL, *timeout)
	if err != nil {
		return err
	}
	results := make([]sendResult, len(requests))
	var sent, answered, accepted atomic.Int64
	start := time.Now()
	startUs := start.UnixMicro()
	sinceStartUs := func() int64 { return startUs + time.Since(start).Microseconds() }

	stopProgress := everySecond(func() {
		printJSON(map[string]any{"progress": map[string]any{"phase": "send", "total": len(requests),
			"sent": sent.Load(), "answered": answered.Load(), "accepted": accepted.Load()}})
	})
	due := make(chan int)
	var workers sync.WaitGroup
	for range *connections {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for index := range due {
				result := &results[index]
				result.Index = index
				result.ScheduledUs = startUs + requests[index].AtUs
				result.SentUs = sinceStartUs()
				sent.Add(1)
				post(client, auth, &requests[index], result)
				result.AnsweredUs = sinceStartUs()
				answered.Add(1)
				if result.Status == http.StatusAccepted {
					accepted.Add(1)
				}
			}
		}()
	}
	// Open loop: hand each request to a worker at its time. When every worker is busy the
	// hand-over waits; the request is then sent late, and its scheduled time says so. A
	// server far behind could make that wait without end: past the send limit, the
	// requests left are not sent at all, and their results say so.
	var lastDue time.Duration
	if len(requests) > 0 {
		lastDue = time.Duration(requests[len(requests)-1].AtUs) * time.Microsecond
	}
	giveUp := time.NewTimer(time.Until(start.Add(lastDue + *sendLimit)))
	defer giveUp.Stop()
	unsent := len(requests) // the index of the first request not sent
dispatch:
	for index := range requests {
		if wait := time.Until(start.Add(time.Duration(requests[index].AtUs) * time.Microsecond)); wait > 0 {
			time.Sleep(wait)
		}
		select {
		case due <- index:
		case <-giveUp.C:
			unsent = index
			break dispatch
		}
	}
	close(due)
	for index := unsent; index < len(requests); index++ {
		results[index] = sendResult{Index: index, ScheduledUs: startUs + requests[index].AtUs,
			Error: "not sent: the send limit passed while every connection was busy"}
	}
	workers.Wait()
	stopProgress()
	if err := writeJSONLines(*resultsPath, len(results), func(i int) any { return &results[i] }); err != nil {
		return err
	}
	printSummary("send", len(requests), time.Since(start))
	return nil
}

func post(client *client, auth map[string]string, req *request, result *sendResult) {
	answer, err := client.do(http.MethodPost, "/v1/payments", []string{"Content-Type: application/json",
		auth[req.Tenant], "Idempotency-Key: " + req.Key}, req.Body)
	if err != nil {
		result.Error = err.Error()
		return
	}
	result.Status = answer.status
	result.RetryAfter = answer.retryAfter
	if answer.status == http.StatusAccepted {
		var accepted struct {
			PaymentID string `json:"payment_id"`
		}
		if err := json.Unmarshal(answer.body, &accepted); err != nil {
			result.Error = "202 without a payment_id: " + err.Error()
			return
		}
		result.PaymentID = accepted.PaymentID
	}
}

func runFetch(args []string) error {
	flags := flag.NewFlagSet("fetch", flag.ExitOnError)
	baseURL := flags.String("url", "", "intake base URL (loopback only)")
	paymentsPath := flags.String("payments", "", "JSON-lines file of {tenant, payment_id}")
	resultsPath := flags.String("results", "", "JSON-lines file to write the last answers to")
	concurrency := flags.Int("concurrency", 8, "GET requests in flight at most")
	deadline := flags.Duration("deadline", 120*time.Second, "stop asking after this long")
	interval := flags.Duration("interval", time.Second, "shortest time between two asks for one payment")
	finalList := flags.String("final", "SETTLED,REJECTED,FAILED,HELD", "statuses after which a payment is not asked again")
	keysPath := flags.String("keys", "", "JSON file of {tenant: API key} (payorch up's api-keys.json)")
	flags.Parse(args)
	if err := checkLoopback(*baseURL); err != nil {
		return err
	}
	payments, err := readPayments(*paymentsPath)
	if err != nil {
		return err
	}
	auth, err := readKeys(*keysPath)
	if err != nil {
		return err
	}
	final := map[string]bool{}
	for _, status := range strings.Split(*finalList, ",") {
		final[strings.TrimSpace(status)] = true
	}
	client, err := newClient(*baseURL, 10*time.Second)
	if err != nil {
		return err
	}
	results := make([]fetchResult, len(payments))
	start := time.Now()
	stopAt := start.Add(*deadline)
	pending := make([]int, len(payments))
	for i := range pending {
		pending[i] = i
	}
	var finished atomic.Int64
	stopProgress := everySecond(func() {
		printJSON(map[string]any{"progress": map[string]any{"phase": "fetch", "total": len(payments),
			"final": finished.Load()}})
	})
	for len(pending) > 0 && time.Now().Before(stopAt) {
		roundStarted := time.Now()
		isFinal := fetchRound(client, auth, payments, pending, results, final, *concurrency)
		var still []int
		for position, index := range pending {
			if isFinal[position] {
				finished.Add(1)
			} else {
				still = append(still, index)
			}
		}
		pending = still
		if len(pending) > 0 {
			time.Sleep(min(time.Until(roundStarted.Add(*interval)), time.Until(stopAt)))
		}
	}
	stopProgress()
	if err := writeJSONLines(*resultsPath, len(results), func(i int) any { return &results[i] }); err != nil {
		return err
	}
	printSummary("fetch", len(payments), time.Since(start))
	return nil
}

// fetchRound asks once for every pending payment and tells, per position in pending,
// whether the answer was final.
func fetchRound(client *client, auth map[string]string, payments []payment, pending []int, results []fetchResult,
	final map[string]bool, concurrency int) []bool {
	isFinal := make([]bool, len(pending))
	positions := make(chan int)
	var workers sync.WaitGroup
	for range concurrency {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for position := range positions {
				index := pending[position]
				results[index] = get(client, auth, payments[index])
				isFinal[position] = isFinalRecord(results[index], final)
			}
		}()
	}
	for position := range pending {
		positions <- position
	}
	close(positions)
	workers.Wait()
	return isFinal
}

func get(client *client, auth map[string]string, p payment) fetchResult {
	result := fetchResult{PaymentID: p.PaymentID, Record: json.RawMessage("null")}
	answer, err := client.do(http.MethodGet, "/v1/payments/"+url.PathEscape(p.PaymentID),
		[]string{auth[p.Tenant]}, nil)
	if err != nil {
		return result
	}
	result.HTTPStatus = answer.status
	if answer.status == http.StatusOK && json.Valid(answer.body) {
		result.Record = answer.body
	}
	return result
}

func isFinalRecord(result fetchResult, final map[string]bool) bool {
	if result.HTTPStatus != http.StatusOK {
		return false
	}
	var record struct {
		Status string `json:"status"`
	}
	return json.Unmarshal(result.Record, &record) == nil && final[record.Status]
}

func checkLoopback(baseURL string) error {
	parsed, err := url.Parse(baseURL)
	if err != nil || parsed.Scheme != "http" {
		return fmt.Errorf("-url must be an http URL, got %q", baseURL)
	}
	host := parsed.Hostname()
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("refusing %q: load goes to loopback only", baseURL)
	}
	return nil
}

// readKeys reads {tenant: key} and returns each tenant's Authorization header line.
func readKeys(path string) (map[string]string, error) {
	if path == "" {
		return nil, fmt.Errorf("-keys is required: the intake takes API keys only")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	keys := map[string]string{}
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	auth := make(map[string]string, len(keys))
	for tenant, key := range keys {
		auth[tenant] = "Authorization: Bearer " + key
	}
	return auth, nil
}

func readRequests(path string) ([]request, error) {
	var requests []request
	err := readJSONLines(path, func(line []byte) error {
		var r request
		if err := json.Unmarshal(line, &r); err != nil {
			return err
		}
		requests = append(requests, r)
		return nil
	})
	return requests, err
}

func readPayments(path string) ([]payment, error) {
	var payments []payment
	err := readJSONLines(path, func(line []byte) error {
		var p payment
		if err := json.Unmarshal(line, &p); err != nil {
			return err
		}
		payments = append(payments, p)
		return nil
	})
	return payments, err
}

func readJSONLines(path string, each func([]byte) error) error {
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 1<<20), 1<<24)
	for number := 1; scanner.Scan(); number++ {
		if len(bytes.TrimSpace(scanner.Bytes())) == 0 {
			continue
		}
		if err := each(scanner.Bytes()); err != nil {
			return fmt.Errorf("%s line %d: %w", path, number, err)
		}
	}
	return scanner.Err()
}

func writeJSONLines(path string, count int, item func(int) any) error {
	file, err := os.Create(path)
	if err != nil {
		return err
	}
	buffered := bufio.NewWriterSize(file, 1<<20)
	encoder := json.NewEncoder(buffered)
	for i := range count {
		if err := encoder.Encode(item(i)); err != nil {
			file.Close()
			return err
		}
	}
	return errors.Join(buffered.Flush(), file.Close())
}

// everySecond calls report once a second until the returned stop function is called,
// which reports once more so the last figures are always printed.
func everySecond(report func()) (stop func()) {
	ticker := time.NewTicker(time.Second)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-ticker.C:
				report()
			case <-done:
				return
			}
		}
	}()
	return func() {
		ticker.Stop()
		close(done)
		<-finished
		report()
	}
}

var stdoutMutex sync.Mutex

func printJSON(value any) {
	line, _ := json.Marshal(value)
	stdoutMutex.Lock()
	defer stdoutMutex.Unlock()
	os.Stdout.Write(append(line, '\n'))
}

func printSummary(phase string, requests int, wall time.Duration) {
	var usage syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	seconds := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	printJSON(map[string]any{"summary": map[string]any{"phase": phase, "requests": requests,
		"wall_s": wall.Seconds(), "cpu_user_s": seconds(usage.Utime), "cpu_system_s": seconds(usage.Stime)}})
}
