module maitre/bench/go-proxy

go 1.19
