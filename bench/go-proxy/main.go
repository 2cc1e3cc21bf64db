// The Go anchor of the benchmark: the standard library's httputil.ReverseProxy (the data plane
// of the KEDA HTTP add-on's interceptor and of Knative's activator), nothing else. Built by the
// benchmark when Debian's golang-go is installed; run with GOMAXPROCS=1 to compare with one
// Node event loop. Usage: go-proxy LISTEN_PORT BACKEND_PORT
package main

import (
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: go-proxy LISTEN_PORT BACKEND_PORT")
	}
	backend, err := url.Parse("http://127.0.0.1:" + os.Args[2])
	if err != nil {
		log.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(backend)
	// Keep-alive to the backend with room for every benchmark connection, as the Node floor has.
	proxy.Transport = &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024}
	// wrk cuts its connections at the end of each run; errors are counted by wrk, not logged here.
	proxy.ErrorLog = log.New(io.Discard, "", 0)
	log.Fatal(http.ListenAndServe("127.0.0.1:"+os.Args[1], proxy))
}
