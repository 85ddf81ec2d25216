package main

// A minimal HTTP/1.1 keep-alive client: one request at a time per connection, written
// with one write and read back with net/http's own response parser. net/http's Transport
// runs two goroutines per connection and hands every request between them; on a machine
// the generator shares with the system it measures, those wake-ups were a large part of
// its CPU per request.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// The intake (uvicorn) closes a keep-alive connection idle for 5 s; one idle for less than
// this is still open, so a request on it rarely meets a connection closing under it.
const maxIdle = 4 * time.Second

// errNoAnswer: the connection ended before the first byte of an answer came back.
var errNoAnswer = errors.New("connection closed before an answer")

type client struct {
	address string // host:port to dial
	host    string // the Host header
	timeout time.Duration
	mu      sync.Mutex
	// Idle connections, the most recently used last: taking from the end keeps as few
	// connections busy as the load needs, instead of cycling through all of them.
	idle []*connection
}

type connection struct {
	net.Conn
	reader   *bufio.Reader
	lastUsed time.Time
}

type answer struct {
	status     int
	retryAfter string
	body       []byte
}

func newClient(baseURL string, timeout time.Duration) (*client, error) {
	parsed, err := url.Parse(baseURL)
	if err != nil {
		return nil, err
	}
	address := parsed.Host
	if parsed.Port() == "" {
		address = net.JoinHostPort(parsed.Hostname(), "80")
	}
	return &client{address: address, host: parsed.Host, timeout: timeout}, nil
}

// do sends one request and reads its whole answer. headers are complete "Name: value" lines.
func (c *client) do(method, path string, headers []string, body []byte) (answer, error) {
	request := c.encode(method, path, headers, body)
	for attempt := 0; ; attempt++ {
		conn, reused, err := c.take()
		if err != nil {
			return answer{}, err
		}
		result, keepOpen, err := c.exchange(conn, request)
		if err == nil {
			if keepOpen {
				c.give(conn)
			} else {
				conn.Close()
			}
			return result, nil
		}
		conn.Close()
		// A reused connection the server had just closed fails before any answer: send
		// once more on a new one. Every POST carries an Idempotency-Key, so a request the
		// server did see is answered again as it was the first time, not taken twice.
		if !reused || attempt > 0 || !errors.Is(err, errNoAnswer) {
			return answer{}, err
		}
	}
}

func (c *client) encode(method, path string, headers []string, body []byte) []byte {
	var buffer bytes.Buffer
	buffer.Grow(256 + len(body))
	fmt.Fprintf(&buffer, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, path, c.host)
	for _, header := range headers {
		buffer.WriteString(header)
		buffer.WriteString("\r\n")
	}
	if body != nil {
		buffer.WriteString("Content-Length: " + strconv.Itoa(len(body)) + "\r\n")
	}
	buffer.WriteString("\r\n")
	buffer.Write(body)
	return buffer.Bytes()
}

func (c *client) exchange(conn *connection, request []byte) (result answer, keepOpen bool, err error) {
	if err = conn.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		return result, false, err
	}
	if _, err = conn.Write(request); err != nil {
		return result, false, errors.Join(errNoAnswer, err)
	}
	if _, err = conn.reader.Peek(1); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isConnectionReset(err) {
			err = errors.Join(errNoAnswer, err)
		}
		return result, false, err
	}
	response, err := http.ReadResponse(conn.reader, nil)
	if err != nil {
		return result, false, err
	}
	result.status = response.StatusCode
	result.retryAfter = response.Header.Get("Retry-After")
	// Read to the end, or the next answer on this connection would start mid-body.
	result.body, err = io.ReadAll(response.Body)
	response.Body.Close()
	return result, err == nil && !response.Close, err
}

func isConnectionReset(err error) bool {
	var opError *net.OpError
	return errors.As(err, &opError) && !opError.Timeout()
}

func (c *client) take() (conn *connection, reused bool, err error) {
	c.mu.Lock()
	for len(c.idle) > 0 {
		conn = c.idle[len(c.idle)-1]
		c.idle = c.idle[:len(c.idle)-1]
		if time.Since(conn.lastUsed) < maxIdle {
			c.mu.Unlock()
			return conn, true, nil
		}
		conn.Close()
	}
	c.mu.Unlock()
	raw, err := net.DialTimeout("tcp", c.address, 5*time.Second)
	if err != nil {
		return nil, false, err
	}
	return &connection{Conn: raw, reader: bufio.NewReaderSize(raw, 16<<10)}, false, nil
}

func (c *client) give(conn *connection) {
	conn.lastUsed = time.Now()
	c.mu.Lock()
	c.idle = append(c.idle, conn)
	c.mu.Unlock()
}
