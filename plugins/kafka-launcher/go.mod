module github.com/conveyor-ci/conveyor/plugins/kafka-launcher

go 1.26.8
